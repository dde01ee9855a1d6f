"""Rewrite tiny_losses.json from a fresh `nemo-reason run` (after an intended numeric change).

    python tests/assets/update_golden.py /path/to/runs/tiny/pretrain/metrics.jsonl
"""

import json
import sys
from pathlib import Path

records = [json.loads(l) for l in Path(sys.argv[1]).read_text().splitlines() if l.strip()]
golden = {r["step"]: r["loss"] for r in records if r["step"] <= 50}
(Path(__file__).parent / "tiny_losses.json").write_text(json.dumps(golden, indent=1) + "\n")
print(golden)
