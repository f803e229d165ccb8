"""Plain-text tables of run results."""

from __future__ import annotations

from typing import Any


def summary_row(label: str, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": label,
        "test acc %": f"{100 * m['test_acc']:.2f}",
        "trainable": m["params_trainable"],
        "total params": m["params_total"],
        "MFLOPs/sample": f"{m['flops'] / 1e6:.3f}",
        "eff. MFLOPs": f"{m['flops_effective'] / 1e6:.3f}",
        "ms/step": f"{1000 * m['step_time']:.2f}",
        "img/s": f"{m['images_per_s']:.0f}",
        "train s": f"{m['train_time']:.1f}",
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)"
    cols = list(rows[0])
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*cols), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in cells]
    return "\n".join(lines)
