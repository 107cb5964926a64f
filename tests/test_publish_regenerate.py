"""Every published table is a function of its results: ``python -m repro.publish --regenerate``
rebuilds each one (results.md from results.json, the distorted-MNIST and co-localisation table.md
from their folders' results, SVHN timing.md from timing.json) byte for byte. The only exceptions
are the tables written by an earlier format of a writer (``publish.LEGACY_TABLES``), pinned here
so that a table can neither start differing nor silently drop out of the check."""
import pytest

from repro import publish
from repro.paths import PUBLISHED_DIR

pytestmark = pytest.mark.usefixtures("one_thread")

TABLE_NAMES = ("results.md", "table.md", "timing.md")


def _published_tables():
    return sorted(p.relative_to(PUBLISHED_DIR).as_posix() for name in TABLE_NAMES for p in PUBLISHED_DIR.rglob(name))


def test_every_published_table_regenerates_byte_for_byte():
    same, differ = publish.check_regenerated(PUBLISHED_DIR)  # the legacy tables included: they must differ
    same, differ = sorted(p.as_posix() for p in same), sorted(p.as_posix() for p in differ)
    assert differ == sorted(publish.LEGACY_TABLES), "a published table no longer regenerates from its results"
    assert sorted(same + differ) == _published_tables()  # every table was regenerated, none skipped
    assert len(same) >= 21


def test_regenerate_cli_check(capsys):
    assert publish.main(["--regenerate", "--check"]) == 0
    assert "0 differ" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        publish.main(["--regenerate", "--check", "somewhere", "else"])
