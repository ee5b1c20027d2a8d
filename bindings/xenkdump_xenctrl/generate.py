"""Write ``_ffi.py``, cffi's out-of-line ABI module for the declarations in ``decl/*.h``.

    python3 -m xenkdump_xenctrl.generate [PATH]

Run it after changing a declaration; tests/unit/test_binding.py fails while
``_ffi.py`` does not match ``decl/*.h``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from xenkdump_xenctrl import build_ffi

MODULE = "xenkdump_xenctrl._ffi"
DEFAULT_PATH = Path(__file__).with_name("_ffi.py")


def generated() -> str:
    """The text of ``_ffi.py`` for the current declarations."""
    ffi = build_ffi()
    ffi.set_source(MODULE, None)  # None: ABI mode, nothing to compile
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "_ffi.py"
        ffi.emit_python_code(str(path))
        return path.read_text(encoding="utf-8")


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    path.write_text(generated(), encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
