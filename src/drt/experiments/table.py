"""Plain-text tables of run results."""

from __future__ import annotations

from typing import Any


def summary_row(label: str, m: dict[str, Any]) -> dict[str, Any]:
    return {
        "run": label,
        "test acc %": f"{100 * m['test_acc']:.2f}",
        "trainable": m["params_trainable"],
        "total params": m["params_total"],
        "stored": m["params_stored"],
        "MFLOPs/sample": f"{m['flops'] / 1e6:.3f}",
        "eff. MFLOPs": f"{m['flops_effective'] / 1e6:.3f}",
        "ms/step": f"{1000 * m['step_time']:.2f}",
        "img/s": f"{m['images_per_s']:.0f}",
        "train s": f"{m['train_time']:.1f}",
    }


def run_row(r: dict[str, Any]) -> dict[str, Any]:
    """One stored run (``flat_rows``) as ``drt list runs`` shows it: percent, rounded, time to accuracy."""

    def num(key: str, scale: float, fmt: str) -> str:
        v = r.get(key)
        return "" if v is None else format(scale * v, fmt)

    tta = ("" if "tta_target" not in r else "not reached" if r["time_to_target"] is None
           else f"{r['time_to_target']:.1f}")
    return {"id": r["id"], "status": r["status"], "model": r["model"], "dataset": r["dataset"],
            "method": r["method"], "seed": r["seed"], "test acc %": num("test_acc", 100, ".2f"),
            "trainable": num("params_trainable", 1, ","), "MFLOPs/sample": num("flops", 1e-6, ".3f"),
            "ms/step": num("step_time", 1000, ".2f"), "train s": num("train_time", 1, ".1f"), "s to target": tta}


def tta_line(m: dict[str, Any]) -> str | None:
    """Time to accuracy in words (``drt.experiments.tta`` fields merged into a run's metrics), if known."""
    if "tta_target" not in m:
        return None
    head = f"time to {100 * m['tta_target']:.2f}% test accuracy (the dense run's final accuracy - 0.5 points): "
    if m["time_to_target"] is None:
        return head + "not reached"
    ref = m.get("dense_time_to_target")
    return head + f"{m['time_to_target']:.1f} s of training" + (
        f"; dense {ref:.1f} s ({m['tta_vs_dense']:.2f}x)" if ref else "")


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


def method_lines(m: dict[str, Any]) -> list[str]:
    """What the method did, in words: sparsity target vs achieved per layer, PCN ks, frozen counts."""
    lines = []
    if "sparsity_target" in m and "sparsity_achieved" in m:
        fired = ", ".join(m.get("guard_fired") or []) or "no"
        over = f" ({m['prunable_params']:,})" if "prunable_params" in m else ""
        lines.append(f"sparsity over conv+linear weights{over}: target {m['sparsity_target']:.4f}, "
                     f"achieved {m['sparsity_achieved']:.4f}; layer-collapse guard fired: {fired}")
        rows = [{"tensor": r.get("name", ""), "numel": r.get("numel", ""), "kept": r.get("kept", ""),
                 "target density": "-" if r.get("target") is None else f"{r['target']:.4f}",
                 "achieved density": "-" if r.get("achieved") is None else f"{r['achieved']:.4f}"}
                for r in m.get("layers", []) if isinstance(r, dict)]
        if rows:
            lines.append(format_table(rows))
    if "exploration_rate" in m:
        lines.append(f"exploration rate (weights ever active): {m['exploration_rate']:.4f}")
    if m.get("pcn_epoch") and m.get("params_before_pcn"):
        ks = ", ".join(f"{n} {v['k']}/{v['d']}" + (f" {v['exec']}" if "exec" in v else "")
                       for n, v in (m.get("pcn_layers") or {}).items()) or "none (every layer kept all components)"
        lines.append(f"PCN transform after epoch {m['pcn_epoch']}: trainable {m['params_before_pcn']:,} -> "
                     f"{m['params_trainable']:,}; frozen basis numbers {m['params_frozen']:,}; k/d and plan: {ks}")
        if m.get("flops_before_pcn"):
            before, after = m["flops_before_pcn"] / 1e6, m["flops"] / 1e6
            lines.append(f"PCN forward FLOPs per sample: {before:.3f} M -> {after:.3f} M")
        if "pcn_budget_achieved" in m:
            lines.append(f"PCN budget: target {m['pcn_budget_target']:.4f}, achieved {m['pcn_budget_achieved']:.4f}")
    if m.get("trainable_counts"):  # methods that train something other than the model's own entries
        lines.append(f"trained: {m['trainable_counts']}; stored: {m.get('stored_counts', '-')}")
    elif m.get("params_frozen") and not m.get("pcn_layers"):
        lines.append(f"frozen (kept at init, never trained): {m['params_frozen']:,} of {m['params_total']:,}")
    return lines
