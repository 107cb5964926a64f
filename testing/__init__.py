"""Shared test support (repository-local, not installed): the one tolerance table per dtype
(``tolerances``), independent float64 references (``references``) and the AOT-compiler runner
(``compiler``). Tests import from here, never from each other's modules."""
