"""The kit's CUDA path end to end on data/sample, through the command line only, in under 5 minutes on one GPU machine.

    .venv/bin/python bench/gpu_check.py          # or: make gpu-check
    .venv/bin/python bench/gpu_check.py --results-dir /tmp/out --work-dir /tmp/gpu-runs

Every case is a `python -m mcls ...` subprocess (never an import of mcls: its internals move), with its own time
limit inside an overall limit; a failing case does not stop the others. Cases, one table row each:
  fp32       amp=false channels_last=off
  amp-bf16   amp=true channels_last=on (the kit picks bf16 where the GPU supports it, else fp16 + GradScaler)
  amp-fp16   as amp-bf16 with amp_dtype=float16: float16 autocast with the GradScaler
  compile    compile=true with AMP (the first epoch includes compilation)
  predict    `mcls predict` with the amp-bf16 run on data/sample/eval
  ddp-2gpu   torchrun --standalone --nproc_per_node=2 (nccl); skipped when fewer than 2 GPUs are visible
Writes bench/results/gpu.md and gpu.csv with the machine and the command beside each figure. Runs and logs go to
runs/gpu-check/<time>/ (git ignores runs/). Exit status: 0 all cases ok, 1 some case failed, 2 no CUDA GPU (no
results written).
"""
from __future__ import annotations

import time

T0 = time.monotonic()  # the overall budget counts from here, torch's import included

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TOTAL_BUDGET_S = 285  # hard limit for the whole script, counted from its start (torch's import included)
RESERVE_S = 10  # kept back from the last case: killing a timed-out case (<= 7 s) and writing the results
# per-case wall-clock limits (seconds); they sum to 270 with the 2-GPU case, 225 without it, and no case runs past
# TOTAL_BUDGET_S - RESERVE_S from the start
BUDGET_S = {"fp32": 45, "amp-bf16": 30, "amp-fp16": 30, "compile": 95, "predict": 25, "ddp-2gpu": 45}
MIN_START_S = 10  # a case is not started with less time than this left

TRAIN_KEYS = ["data_dir=data/sample", "fold=0", "n_folds=4", "epochs=2", "img_size=128", "batch_size=32",
              "num_workers=2", "device=cuda"]
CSV_COLUMNS = ["case", "status", "error", "wall_s", "limit_s", "train_img_per_s", "val_f1", "amp_dtype",
               "peak_gpu_mem", "note", "machine", "command"]


# ---------------------------------------------------------------------------------------------- the machine


def _sh(cmd: list[str], timeout: float = 10) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(torch) -> dict:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    names = ", ".join(f"{n}x {g}" for g, n in ((g, gpus.count(g)) for g in dict.fromkeys(gpus)))
    driver = _sh(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).splitlines()
    commit = _sh(["git", "rev-parse", "--short", "HEAD"])
    dirty = bool(_sh(["git", "status", "--porcelain", "--untracked-files=no"]))
    return {
        "host": platform.node(), "gpus": names, "n_gpus": len(gpus), "driver": driver[0] if driver else "?",
        "torch": torch.__version__, "cuda": torch.version.cuda or "?", "python": platform.python_version(),
        "cpus": os.cpu_count(), "git": f"{commit}{' (uncommitted changes)' if dirty else ''}" if commit else "?",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def machine_line(m: dict) -> str:
    return (f"{m['host']} ({m['gpus']}, driver {m['driver']}, {m['cpus']} CPUs), torch {m['torch']} "
            f"(CUDA {m['cuda']}), python {m['python']}, git {m['git']}, {m['date']}")


# ------------------------------------------------------------------------------------- GPU memory sampling


class GpuMemory:
    """Samples nvidia-smi's memory.used of every GPU while a case runs; the peak is reported above the idle
    baseline taken just before it. Device-wide, so it includes anything else on the GPU."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.available = shutil.which("nvidia-smi") is not None

    def read(self) -> dict[int, int]:
        out = _sh(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits"], timeout=3)
        used = {}
        for line in out.splitlines():
            try:
                idx, mib = (int(v) for v in line.split(","))
            except ValueError:
                continue
            used[idx] = mib
        return used

    def __enter__(self):
        self.base = self.read() if self.available else {}
        self.peak = dict(self.base)
        self._stop = threading.Event()
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            for idx, mib in self.read().items():
                self.peak[idx] = max(self.peak.get(idx, 0), mib)

    def __exit__(self, *exc):
        self._stop.set()
        if self.available:
            self._thread.join(timeout=3)

    def note(self, gpus: list[int]) -> str:
        if not self.available:
            return "n/a (no nvidia-smi)"
        parts = [f"GPU{i} {self.peak.get(i, 0)} MiB (+{self.peak.get(i, 0) - self.base.get(i, 0)})"
                 for i in gpus if i in self.peak]
        return "; ".join(parts) if parts else "n/a (nvidia-smi gave no reading)"


# ----------------------------------------------------------------------------------------- running a case


def run_command(cmd: list[str], env: dict, limit: float, log_path: Path) -> tuple[int | None, float, str, str]:
    """Runs cmd in its own process group; on the time limit the whole group is killed (torchrun's workers and
    torch.compile's compile workers included). Returns (exit code or None on timeout, seconds, stdout, stderr)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            errors="replace", start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=3 if sig == signal.SIGTERM else 2)
                break
            except subprocess.TimeoutExpired:
                continue
        try:
            out, err = proc.communicate(timeout=2)
        except subprocess.TimeoutExpired:  # a grandchild outside the group still holds the pipes
            out, err = "", "(output lost: the pipes stayed open after the kill)"
        rc = None
    seconds = time.monotonic() - start
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(f"$ {shlex.join(cmd)}\n\n--- stdout ---\n{out}\n--- stderr ---\n{err}\n")
    return rc, seconds, out, err


def _lines(text: str) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]


def last_error_line(out: str, err: str) -> str:
    lines = _lines(err) or _lines(out)
    if not lines:
        return "(no output)"
    for line in reversed(lines):
        if re.search(r"(Error|Exception|error:|Traceback|Killed|failed)", line):
            return line[:300]
    return lines[-1][:300]


EPOCH_LINE = re.compile(r"epoch (\d+): loss (\S+)\s+val f1 ([\d.]+).*?([\d.]+) img/s")
DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "fp16", "fp16": "fp16", "half": "fp16",
          "float32": "fp32", "fp32": "fp32"}


def printed_dtype(text: str) -> str | None:
    """The AMP dtype a run says it used, if it says so (on a line about amp / autocast / precision / dtype)."""
    for line in _lines(text):
        if not re.search(r"(?i)\b(amp|autocast|mixed[ _-]?precision|precision|dtype)\b", line):
            continue
        found = re.search(r"(?i)\b(bfloat16|bf16|float16|fp16|half|float32|fp32)\b", line)
        if found:
            return DTYPES[found.group(1).lower()]
    return None


def final_summary(stdout: str) -> dict:
    """The JSON dict of mean metrics that `mcls train` prints last."""
    blocks = re.findall(r"^\{\s*$.*?^\}\s*$", stdout, flags=re.M | re.S)
    for block in reversed(blocks):
        try:
            return json.loads(block)
        except json.JSONDecodeError:
            continue
    return {}


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "fold0" / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _num(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Check:
    def __init__(self, args, torch, mach: dict):
        self.args, self.torch, self.mach = args, torch, mach
        self.deadline = T0 + TOTAL_BUDGET_S
        self.python = os.path.relpath(sys.executable, ROOT) if sys.executable.startswith(str(ROOT)) \
            else sys.executable
        self.rows: list[dict] = []
        self.bf16 = torch.cuda.get_device_capability(0) >= (8, 0)

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env.update({"NO_ALBUMENTATIONS_UPDATE": "1", "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"})
        env.update(extra or {})
        return env

    def shown(self, cmd: list[str], extra_env: dict | None) -> str:
        cmd = [self.python if c == sys.executable else c for c in cmd]
        prefix = " ".join(f"{k}={v}" for k, v in (extra_env or {}).items())
        return (prefix + " " if prefix else "") + shlex.join(cmd)

    def row(self, case: str, **values) -> dict:
        row = {c: "" for c in CSV_COLUMNS}
        row.update(case=case, machine=machine_line(self.mach), **values)
        self.rows.append(row)
        status = row["status"] + (f" ({row['error']})" if row["error"] else "")
        print(f"[gpu-check] {case}: {status}, {row['wall_s'] or '-'} s", flush=True)
        return row

    def limit_for(self, case: str) -> float | None:
        left = self.deadline - RESERVE_S - time.monotonic()
        return None if left < MIN_START_S else min(BUDGET_S[case], left)

    def execute(self, case: str, cmd: list[str], extra_env: dict | None = None, gpus: tuple = (0,)):
        shown = self.shown(cmd, extra_env)
        limit = self.limit_for(case)
        if limit is None:
            self.row(case, status="failed", error="not started: the 5-minute total budget was spent",
                     limit_s=0, command=shown)
            return None
        print(f"[gpu-check] {case}: {shown}  (limit {limit:.0f} s)", flush=True)
        with GpuMemory() as mem:
            rc, seconds, out, err = run_command(cmd, self.env(extra_env), limit,
                                                self.work / "logs" / f"{case}.log")
        result = {"rc": rc, "seconds": seconds, "out": out, "err": err, "shown": shown, "limit": limit,
                  "peak": mem.note(list(gpus))}
        if rc is None:
            result["error"] = f"timed out after {limit:.0f} s; last line: {last_error_line(out, err)}"
        elif rc != 0:
            result["error"] = f"exit {rc}: {last_error_line(out, err)}"
        return result

    # ------------------------------------------------------------------------------------------ the cases

    def train_case(self, case: str, keys: list[str], extra_env: dict | None = None, launcher: list[str] | None = None,
                   gpus: tuple = (0,), requested: str = "") -> bool:
        run_dir = self.work / case
        cmd = (launcher or [sys.executable, "-m"]) + ["mcls", "train", *TRAIN_KEYS, f"run_dir={run_dir}", *keys]
        res = self.execute(case, cmd, extra_env, gpus)
        if res is None:
            return False
        error = res.get("error", "")
        metrics = read_metrics(run_dir)
        summary = final_summary(res["out"])
        epochs = [m.groups() for m in EPOCH_LINE.finditer(res["out"] + "\n" + res["err"])]
        info_path = run_dir / "run_info.json"
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        if not error:
            if len(metrics) != 2:
                error = f"fold0/metrics.csv has {len(metrics)} epoch row(s), expected 2"
            elif not info.get("cuda"):
                error = "run_info.json records no CUDA device"
        img_s = _num(metrics[-1].get("train_img_per_s")) if metrics else (_num(epochs[-1][3]) if epochs else None)
        f1 = _num(summary.get("f1"))
        notes = []
        if f1 is None and metrics:
            f1 = _num(metrics[-1].get("f1"))
            notes.append("F1 of the last epoch (no final summary printed)")
        dtype = printed_dtype(res["out"] + "\n" + res["err"])
        info_dtype = next((str(v) for k, v in info.items() if "dtype" in k.lower() or "amp" in k.lower()), None)
        if requested == "fp32":
            amp = "fp32 (amp=false)"
        elif dtype:
            amp = f"{dtype} (printed by the run)"
            if requested == "fp16" and dtype != "fp16":
                notes.append(f"amp_dtype=float16 not honoured: the run used {dtype}")
        elif info_dtype:
            amp = f"{info_dtype} (run_info.json)"
        else:
            amp = f"{requested} requested (the run printed no dtype)"
        if requested == "fp16":
            notes.append("fp16 + GradScaler (amp_dtype=float16)")
        if case == "compile" and epochs:
            notes.append(f"epoch 1 (with compilation) {float(epochs[0][3]):.1f} img/s")
        if case == "ddp-2gpu" and info.get("processes"):
            notes.append(f"run_info processes={info['processes']}")
        self.row(case, status="failed" if error else "ok", error=error, wall_s=round(res["seconds"], 1),
                 limit_s=round(res["limit"]), train_img_per_s=round(img_s, 1) if img_s is not None else "",
                 val_f1=round(f1, 4) if f1 is not None else "", amp_dtype=amp, peak_gpu_mem=res["peak"],
                 note="; ".join(notes), command=res["shown"])
        return not error

    def predict_case(self, source: str, source_ok: bool) -> None:
        case, run_dir = "predict", self.work / source
        out_csv = self.work / "predict" / "submission.csv"
        cmd = [sys.executable, "-m", "mcls", "predict", "--run", str(run_dir), "--out", str(out_csv),
               "data_dir=data/sample", "device=cuda"]
        if not source_ok:
            self.row(case, status="failed", error=f"not started: the {source} run it predicts with failed",
                     command=self.shown(cmd, None))
            return
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        res = self.execute(case, cmd)
        if res is None:
            return
        error = res.get("error", "")
        n_eval = _count_rows(ROOT / "data" / "sample" / "eval" / "info.csv")
        n_out = _count_rows(out_csv)
        if not error and n_out != n_eval:
            error = f"{out_csv.name} has {n_out} row(s), data/sample/eval/info.csv {n_eval}"
        note = f"{n_out} eval images predicted with the {source} run (wall time includes start-up)" \
            if n_out else ""
        self.row(case, status="failed" if error else "ok", error=error, wall_s=round(res["seconds"], 1),
                 limit_s=round(res["limit"]), peak_gpu_mem=res["peak"],
                 note=note, command=res["shown"])

    def run(self) -> int:
        self.work = Path(self.args.work_dir or ROOT / "runs" / "gpu-check" / time.strftime("%Y%m%d-%H%M%S"))
        self.work.mkdir(parents=True, exist_ok=True)
        amp = "bf16" if self.bf16 else "fp16"
        self.train_case("fp32", ["amp=false", "channels_last=off", "compile=false"], requested="fp32")
        amp_ok = self.train_case("amp-bf16", ["amp=true", "channels_last=on", "compile=false"], requested=amp)
        self.train_case("amp-fp16", ["amp=true", "amp_dtype=float16", "channels_last=on", "compile=false"],
                        requested="fp16")
        self.train_case("compile", ["amp=true", "channels_last=on", "compile=true"], requested=amp)
        self.predict_case("amp-bf16", amp_ok)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
        if self.mach["n_gpus"] >= 2:
            self.train_case("ddp-2gpu", ["amp=true", "channels_last=on", "compile=false"], launcher=launcher,
                            gpus=(0, 1), requested=amp)
        else:
            self.row("ddp-2gpu", status=f"skipped: {self.mach['n_gpus']} GPU visible",
                     command=self.shown(launcher + ["mcls", "train", "..."], None))
        return self.write()

    # --------------------------------------------------------------------------------------------- output

    def write(self) -> int:
        out = Path(self.args.results_dir)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "gpu.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        total = time.monotonic() - T0
        failed = [r["case"] for r in self.rows if r["status"] == "failed"]
        command = self.shown([sys.executable, *sys.argv], None)
        header = ["case", "status", "wall s", "limit s", "train img/s (last epoch)", "val macro F1", "AMP dtype",
                  "peak GPU memory", "note", "command"]
        keys = ["case", "status", "wall_s", "limit_s", "train_img_per_s", "val_f1", "amp_dtype", "peak_gpu_mem",
                "note", "command"]

        def cell(row, key):
            text = str(row[key])
            if key == "status" and row["error"]:
                text += f": {row['error']}"
            if key == "command" and text:
                text = f"`{text}`"
            return text.replace("|", "\\|").replace("\n", " ")

        lines = [
            "# GPU check: the CUDA path end to end on data/sample",
            "",
            f"machine: {machine_line(self.mach)}",
            "",
            f"command: `{command}` (or `make gpu-check`); total {total:.0f} s of a {TOTAL_BUDGET_S} s limit; "
            f"{'all cases ok' if not failed else 'FAILED: ' + ', '.join(failed)}",
            "",
            f"Every case is a `python -m mcls` subprocess run from the repository root with `{' '.join(TRAIN_KEYS)}` "
            "plus the keys in its command; pinned host memory is used automatically on CUDA (no key). The sample is "
            "tiny (a step or two per epoch), so img/s and F1 show that the path works, not how fast or how good "
            "it is (bench/speed.md and bench/quality.md measure that). Peak GPU memory is nvidia-smi's device-wide "
            "memory.used sampled every 0.5 s, with the rise above the idle reading before the case in brackets. "
            "The AMP dtype column is what the run logged (`fold k on cuda (AMP ...)`), or 'requested' when it "
            "logged none.",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "|".join(":--" if k in ("case", "status", "amp_dtype", "peak_gpu_mem", "note", "command")
                           else "--:" for k in keys) + "|",
            *("| " + " | ".join(cell(r, k) for k in keys) + " |" for r in self.rows),
            "",
            f"Runs and per-case logs (stdout and stderr): `{_rel(self.work)}`.",
            "",
        ]
        (out / "gpu.md").write_text("\n".join(lines))
        print(f"[gpu-check] {len(self.rows) - len(failed)} of {len(self.rows)} cases not failed in {total:.0f} s; "
              f"wrote {_rel(out / 'gpu.md')} and {_rel(out / 'gpu.csv')}", flush=True)
        return 1 if failed else 0


def _count_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        return max(sum(1 for _ in csv.reader(f)) - 1, 0)


def _rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results-dir", default=str(ROOT / "bench" / "results"),
                        help="where gpu.md and gpu.csv go (default: bench/results)")
    parser.add_argument("--work-dir", help="folder for the runs and logs (default: runs/gpu-check/<time>)")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu_check.py needs a CUDA GPU (torch sees none), so nothing was run or written.")
        return 2
    return Check(args, torch, machine(torch)).run()


if __name__ == "__main__":
    sys.exit(main())
