"""`hack/demo.sh`'s end-to-end demo (run: python3 -m hack.demo, from the checkout's root)."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The checkout first (not whatever graft an editable install points at), and the private
# containerd's helpers, imported by their module names as bench/ and tests/ do.
for _path in (str(ROOT / "hack" / "containerd"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
