"""Merges the reports of a full gpu_check run and its reruns (`--only ...`) into one folder.

A GPU lease is short, so a stage that failed or was skipped is rerun with `--only` in the same
lease; each call's results.tar.gz holds only what that call ran. This merges them, in the
order they ran, into the folder to commit:

  python benchmarks/gpu/merge_runs.py run1/results.tar.gz run2/results.tar.gz \\
      --out benchmarks/results/gpu-h200

Per throughput preset: every variant's last successful result (a failure replaces nothing),
each tagged with the run it came from; the summary is recomputed, and the report says which
run measured what and how far a variant timed in several runs moved between them (the
cross-run noise beside a ratio of variants from different runs). gpu_check.{json,md}: each
stage's last record that ran, checks, end-to-end runs and profiles from the run that made
them, the throughput headlines from the merged presets, every run's command.
"""

import argparse
import json
import pathlib
import shutil
import sys
import tarfile
import tempfile

if __package__ in (None, ""):
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from benchmarks.gpu import gpu_check_report  # pylint: disable=wrong-import-position
from benchmarks.step import report, throughput  # pylint: disable=wrong-import-position

PRESETS = ("classic", "tgs", "carvana")


def unpack(path: pathlib.Path, into: pathlib.Path) -> pathlib.Path:
  """The <slug>/ folder of a results.tar.gz (or the folder itself)."""
  if path.is_dir():
    return path
  with tarfile.open(path) as archive:
    archive.extractall(into, filter="data")
  folders = [p for p in into.iterdir() if p.is_dir()]
  if len(folders) != 1:
    raise SystemExit(f"error: {path} holds {len(folders)} folders, expected one <slug>/; pass "
                     "a results.tar.gz written by gpu_check.py")
  return folders[0]


def merge_preset(reports: list[dict]) -> dict:
  """One throughput report from several runs' reports of the same preset, oldest first."""
  merged = json.loads(json.dumps(reports[-1]))
  by_variant, timed = {}, {}
  for data in reports:
    run = data["environment"]["started_utc"]
    for result in data["results"]:
      result = {**result, "run": run}
      name = result["variant"]
      if result["status"] == "ok":
        timed.setdefault(name, []).append(result["img_per_s"]["median"])
      if result["status"] == "ok" or name not in by_variant or \
          by_variant[name]["status"] != "ok":
        by_variant[name] = result
  merged["results"] = list(by_variant.values())
  merged["summary"] = throughput.summarize(merged["results"])
  runs = [{"started_utc": d["environment"]["started_utc"],
           "variants": [r["variant"] for r in d["results"] if r["status"] == "ok"]}
          for d in reports]
  spread = {name: max(rates) / min(rates) - 1 for name, rates in timed.items() if len(rates) > 1}
  merged["merged_from"] = {"runs": runs, "cross_run_spread": spread}
  if len(reports) > 1:
    listing = "; ".join(f"{r['started_utc'][11:16]} UTC: {', '.join(r['variants']) or 'none'}"
                        for r in runs)
    noise = ", ".join(f"{name} {value:.1%}" for name, value in spread.items()) or "none timed twice"
    merged["note"] = (f"{merged.get('note', '')}; merged from {len(reports)} runs on this kind "
                      f"of machine, each variant's last successful one ({listing}); between "
                      f"runs (noise, or the project's code changed between leases) a variant "
                      f"timed in several moved by: {noise}").lstrip("; ")
  return merged


def merge_checks(runs: list[dict], presets: dict) -> dict:
  """gpu_check.json of several runs: the first run's, updated by every later one."""
  merged = json.loads(json.dumps(runs[0]))
  for data in runs[1:]:
    for name, record in data["stages"].items():
      if record["status"] != "skipped" or name not in merged["stages"]:
        merged["stages"][name] = record
    for key in ("checks", "e2e", "profile"):
      merged[key].update(data[key])
    merged["device_info"] = merged.get("device_info") or data.get("device_info")
  merged["throughput"] = {name: gpu_check_report.throughput_summary(data)
                          for name, data in presets.items()}
  merged["environment"]["runs"] = [
      {"started_utc": d["environment"]["started_utc"], "wall_s": d["environment"]["wall_s"],
       "command": d["environment"]["command"]} for d in runs]
  merged["summary"] = gpu_check_report.summarize(merged)
  return merged


def merge(paths: list[pathlib.Path], out: pathlib.Path) -> list[pathlib.Path]:
  """Writes the merged reports to `out`; returns the files written."""
  out.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory() as scratch:
    folders = [unpack(p, pathlib.Path(scratch) / str(i)) for i, p in enumerate(paths)]
    checks = [json.loads((f / "gpu_check.json").read_text()) for f in folders]
    presets = {}
    for preset in PRESETS:
      reports = [json.loads((f / f"{preset}.json").read_text()) for f in folders
                 if (f / f"{preset}.json").exists()]
      if reports:
        presets[preset] = merge_preset(reports)
    written = [p for data in presets.values() for p in report.write(data, out)]
    for folder in folders:  # Plots and profiles: the latest run's copy of each.
      for extra in folder.iterdir():
        if extra.suffix in (".png", ".json", ".md") and extra.stem not in (*PRESETS, "gpu_check"):
          shutil.copyfile(extra, out / extra.name)
          written.append(out / extra.name)
  merged = merge_checks(checks, presets)
  (out / "gpu_check.json").write_text(json.dumps(merged, indent=2, default=str) + "\n")
  (out / "gpu_check.md").write_text(gpu_check_report.markdown(merged))
  return sorted(set(written + [out / "gpu_check.json", out / "gpu_check.md"]))


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", type=pathlib.Path,
                      help="results.tar.gz files (or their <slug>/ folders), in the order run")
  parser.add_argument("--out", type=pathlib.Path, required=True,
                      help="Folder for the merged reports, e.g. benchmarks/results/gpu-h200.")
  args = parser.parse_args(argv)
  missing = [str(p) for p in args.runs if not p.exists()]
  if missing:
    parser.error(f"no such run: {', '.join(missing)}; pass the results.tar.gz of each call")
  for path in merge(args.runs, args.out):
    print(path)
  return 0


if __name__ == "__main__":
  sys.exit(main())
