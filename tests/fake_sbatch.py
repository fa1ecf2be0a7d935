"""A stand-in for SLURM's `sbatch` at the boundary the cluster recipe (examples/slurm/run_study.sh) talks to: it runs
each submitted job at once, on this machine, as SLURM would once the job's dependencies are met.

Understood: --parsable, --job-name, --output (%x %j %A %a), --dependency=afterok:ID[:ID...], --array=0-N, --wrap;
other options (--gres, --partition, ...) are recorded and ignored. A job whose dependency failed never runs (SLURM's
DependencyNeverSatisfied); a dependency on an id never submitted is refused as sbatch refuses it. Array tasks run
last-to-first, so a recipe that relied on task order would show it. Each task gets SLURM_ARRAY_TASK_ID,
SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN, SLURM_ARRAY_JOB_ID and SLURM_JOB_ID. Every submission is appended to
$FAKE_SLURM_STATE/jobs.json (id, name, dependencies, tasks, whether it succeeded) for the test to read.
"""
import json
import os
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    state = Path(os.environ["FAKE_SLURM_STATE"])
    state.mkdir(parents=True, exist_ok=True)
    ledger = state / "jobs.json"
    jobs = json.loads(ledger.read_text()) if ledger.is_file() else []
    options, other = {}, []
    for arg in argv:
        key, separator, value = arg.partition("=")
        if key in ("--parsable",):
            options[key] = True
        elif separator and key in ("--job-name", "--output", "--dependency", "--array", "--wrap"):
            options[key] = value
        else:
            other.append(arg)
    if "--wrap" not in options:
        print("sbatch: error: this stand-in runs --wrap jobs only", file=sys.stderr)
        return 1
    after = []
    if "--dependency" in options:
        kind, _, ids = options["--dependency"].partition(":")
        if kind != "afterok":
            print(f"sbatch: error: this stand-in knows afterok only, not {kind}", file=sys.stderr)
            return 1
        after = ids.split(":")
    known = {job["id"]: job for job in jobs}
    if any(job_id not in known for job_id in after):
        print("sbatch: error: Batch job submission failed: Job dependency problem", file=sys.stderr)
        return 1
    job_id = str(1000 + len(jobs))
    name = options.get("--job-name", "wrap")
    tasks = [None]
    if "--array" in options:
        first, _, last = options["--array"].partition("-")
        tasks = list(range(int(first), int(last) + 1))
    runs = all(known[job_id_]["ok"] for job_id_ in after)
    codes = []
    if runs:
        for task in reversed(tasks):
            environ = {**os.environ, "SLURM_JOB_ID": job_id}
            for variable in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                             "SLURM_ARRAY_JOB_ID"):
                environ.pop(variable, None)
            if task is not None:
                environ.update(SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT=str(len(tasks)),
                               SLURM_ARRAY_TASK_MIN=str(tasks[0]), SLURM_ARRAY_JOB_ID=job_id)
            log = (options.get("--output", "slurm-%j.out").replace("%x", name).replace("%A", job_id)
                   .replace("%j", job_id).replace("%a", str(task)))
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as out:
                codes.append(subprocess.run(["bash", "-c", options["--wrap"]], env=environ, stdout=out,
                                            stderr=subprocess.STDOUT).returncode)
    jobs.append({"id": job_id, "name": name, "after": after, "tasks": len(tasks) if tasks != [None] else None,
                 "ran": runs, "ok": runs and all(code == 0 for code in codes), "codes": codes, "other": other})
    ledger.write_text(json.dumps(jobs, indent=1))
    print(job_id if options.get("--parsable") else f"Submitted batch job {job_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
