"""The local stream store (serving/sqlite_store.py) beyond the contract every store keeps
(test_serving_store_contract.py): one process per store."""

import subprocess
import sys

import pytest

from compressive_rt.serving.sqlite_store import SQLiteStore

pytestmark = pytest.mark.serving

ENGINE = '{"graphs": {"segment": "aaaa"}}'


@pytest.fixture
def store(tmp_path):
    opened = SQLiteStore(tmp_path / "store", ENGINE)
    yield opened
    opened.close()


OPEN = "import sys; from compressive_rt.serving.sqlite_store import SQLiteStore; " \
       "SQLiteStore(sys.argv[1], sys.argv[2])"


def test_a_second_process_cannot_open_a_store_in_use(store):
    """(A subprocess of its own: multiprocessing's spawn re-imports pytest's entry script.)"""
    opened = subprocess.run([sys.executable, "-c", OPEN, str(store.directory), ENGINE],
                            capture_output=True, text=True, timeout=60)
    assert opened.returncode != 0
    assert f"the stream store {store.directory} is in use by another process" in opened.stderr
