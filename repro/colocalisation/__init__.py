"""Co-localisation (supplement section 1.2): the recipe is :mod:`.recipe`; the pieces, in the
order the recipe uses them, :mod:`.geometry`, :mod:`.encoder`, :mod:`.candidates`, then
:mod:`.table`, :mod:`.diagnose` and the command line ``python -m repro.colocalisation``
(:mod:`.__main__`)."""
