"""The time-to-quality summary: speedup to PyTorch's final IoU, per-step gaps, seed spread."""

import itertools

import numpy as np

SPEEDUP_TARGET = 1.2  # Issue 14: JAX at PyTorch's final IoU in at most 1/1.2 of its time.


def time_to_reach(points, target: float, key: str = "iou") -> float | None:
  """Training seconds at which the curve first reaches `target` (linear between evaluations),
  or None if it never does."""
  if points[0][key] >= target:
    return points[0]["seconds"]
  for before, after in zip(points, points[1:]):
    if after[key] >= target:
      fraction = (target - before[key]) / (after[key] - before[key])
      return before["seconds"] + fraction * (after["seconds"] - before["seconds"])
  return None


def max_gap_per_step(a, b, key: str = "iou") -> dict:
  """max |a - b| of two curves at common step counts: both interpolated (linearly, in steps)
  onto every evaluated step count after step 0 up to the shorter run's last. Step 0 (before
  training) is left out: two seeds start from different weights, and that gap says nothing
  about how alike they train."""
  last = min(a[-1]["steps"], b[-1]["steps"])
  grid = sorted({p["steps"] for p in a + b if 0 < p["steps"] <= last})
  if not grid:
    return None
  values = [np.interp(grid, [p["steps"] for p in c], [p[key] for p in c]) for c in (a, b)]
  gaps = np.abs(values[0] - values[1])
  worst = int(np.argmax(gaps))
  return {"max": float(gaps[worst]), "at_step": grid[worst], "steps_compared": len(grid),
          "up_to_step": last}


def run_summary(result) -> dict:
  final = result["points"][-1]
  train_s = final["seconds"]
  return {"final_iou": final["iou"], "final_tgs_map": final["tgs_map"],
          "steps": final["steps"], "train_s": train_s,
          "steps_per_s": final["steps"] / train_s if train_s else None,
          "setup_s": result["setup_s"],
          "eval_s_total": sum(p["eval_s"] for p in result["points"]),
          "evaluations": len(result["points"])}


def _speedup(jax_run, torch_run) -> dict:
  target = torch_run["points"][-1]["iou"]
  torch_s = time_to_reach(torch_run["points"], target)
  jax_s = time_to_reach(jax_run["points"], target)
  out = {"target_iou": target, "torch_s_to_target": torch_s, "jax_s_to_target": jax_s,
         "jax_reached_target": jax_s is not None, "speedup": None,
         "speedup_including_setup": None}
  out["torch_improved"] = torch_s > 0  # Else its final IoU is its initial one: no speedup.
  if jax_s is not None and jax_s > 0 and torch_s > 0:
    out["speedup"] = torch_s / jax_s
  if jax_s is not None and torch_s > 0:
    out["speedup_including_setup"] = ((torch_s + torch_run["setup_s"]) /
                                      (jax_s + jax_run["setup_s"]))
  return out


def _seed_spread(torch_runs, key: str) -> dict | None:
  gaps = [max_gap_per_step(a["points"], b["points"], key)
          for a, b in itertools.combinations(torch_runs, 2)]
  gaps = [gap for gap in gaps if gap]
  return max(gaps, key=lambda gap: gap["max"]) if gaps else None


def summarize(results) -> dict:
  """Per-run figures plus, where the runs exist, the JAX-vs-PyTorch comparisons."""
  done = [r for r in results if r["status"] == "ok"]
  summary = {"runs": {r["name"]: run_summary(r) for r in done},
             "failed": [r["name"] for r in results if r["status"] != "ok"]}
  jax_run = next((r for r in done if r["framework"] == "jax"), None)
  torch_runs = [r for r in done if r["framework"] == "torch"]
  twin = next((r for r in torch_runs if jax_run and r["seed"] == jax_run["seed"]), None)
  if jax_run and twin:
    summary.update(_speedup(jax_run, twin))
    summary["jax_final_iou"] = jax_run["points"][-1]["iou"]
    summary["torch_final_iou"] = twin["points"][-1]["iou"]
    summary["jax_final_higher"] = summary["jax_final_iou"] > summary["torch_final_iou"]
    summary["meets_speedup_target"] = (summary["speedup"] is not None and
                                       summary["speedup"] >= SPEEDUP_TARGET)
  for key in ("iou", "tgs_map"):
    spread = _seed_spread(torch_runs, key)
    gap = max_gap_per_step(jax_run["points"], twin["points"], key) if jax_run and twin else None
    summary[f"torch_seed_spread_{key}"] = spread
    summary[f"per_step_max_diff_{key}"] = gap
    summary[f"per_step_within_spread_{key}"] = (gap["max"] <= spread["max"]
                                                if gap and spread else None)
  summary["eval_s_total"] = {r["name"]: summary["runs"][r["name"]]["eval_s_total"] for r in done}
  return summary
