"""Export the tiny test engines the C++ tests and the C example run on (ctest's fixture).

python native/tests/export_engines.py OUT_DIR  ->  OUT_DIR/conv, OUT_DIR/most_used, OUT_DIR/none
The models are tests/support/engines.py's (random weights, seed 0), so the engines are the ones the
pytest suite exports. An engine already there is kept when its manifest has this checkout's
format_version (an engine of an older contract is exported again).
"""

import json
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(CHECKOUT / "tests"))

from support.engines import export_tiny  # noqa: E402

from compressive_rt.runtime.manifest import FORMAT_VERSION  # noqa: E402


def current(engine_dir: Path) -> bool:
    manifest = engine_dir / "manifest.json"
    return manifest.is_file() and json.loads(manifest.read_text()).get("format_version") == \
        FORMAT_VERSION


if __name__ == "__main__":
    out = Path(sys.argv[1])
    for compress_fn in ("conv", "most_used", "none"):
        if not current(out / compress_fn):
            export_tiny(compress_fn, out / compress_fn)
            print(f"exported {out / compress_fn}")
