#!/usr/bin/env python3
"""Output of bench/files.sh (standard library only).

    report.py machine   print the machine
    report.py dataset   print the data set summary ($BENCH_DIR/data/summary.json)
    report.py report    print the results table and ratios from
                        $BENCH_DIR/results-files.tsv and tools.tsv, and write
                        $BENCH_DIR/results-files.json
"""
import datetime
import json
import os
import sys

BENCH_DIR = os.environ.get("BENCH_DIR", "/var/tmp/lifeboat-bench")
TOOLS = ["lifeboat", "restic", "rustic", "borg"]
STEPS = [("backup_v1", "backup v1 (first)"), ("backup_v2", "backup v2 (~5% changed)"),
         ("backup_unchanged", "backup, nothing changed"), ("restore", "restore latest (v2)")]
MiB = 1 << 20


def machine():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            mem[k] = int(v.split()[0]) * 1024
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_model": model,
            "mem_total_bytes": mem["MemTotal"], "mem_free_bytes": mem["MemFree"],
            "mem_available_bytes": mem["MemAvailable"], "kernel": os.uname().release}


def print_machine(m):
    print(f"machine: {m['nproc']} CPUs ({m['cpu_model']}), "
          f"memory {m['mem_total_bytes'] / 2**30:.1f} GiB total, "
          f"{m['mem_free_bytes'] / 2**30:.1f} GiB free, "
          f"{m['mem_available_bytes'] / 2**30:.1f} GiB available, Linux {m['kernel']}")


def summary():
    with open(os.path.join(BENCH_DIR, "data", "summary.json")) as f:
        return json.load(f)


def print_dataset(s):
    v1, v2 = s["v1"], s["v2"]
    print(f"data set (scale {s['scale']}, seed {s['seed']}):")
    print(f"  v1: {v1['files']} files, {v1['bytes']} bytes ({v1['bytes'] / MiB:.1f} MiB)")
    for name, c in v1["by_top_dir"].items():
        print(f"      {name + '/':7s} {c['files']:7d} files {c['bytes'] / MiB:9.1f} MiB")
    print(f"  v2: {v2['files']} files, {v2['bytes']} bytes ({v2['bytes'] / MiB:.1f} MiB); "
          f"{v2['bytes_new_or_rewritten'] / MiB:.1f} MiB new or rewritten "
          f"({v2['percent_new_or_rewritten']}% of v1) in {v2['files_changed']} changed and "
          f"{v2['files_added']} added files; {v2['files_deleted']} deleted, "
          f"{v2['files_moved']} moved (renamed directory)")


def read_tsv(name, width):
    rows = []
    path = os.path.join(BENCH_DIR, name)
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                cells = line.rstrip("\n").split("\t")
                rows.append(cells + [""] * (width - len(cells)))
    return rows


def num(s, kind=float):
    try:
        return kind(s)
    except ValueError:
        return None


def collect(s):
    results = {t: {"status": "not run", "reason": "not in BENCH_TOOLS", "steps": {}} for t in TOOLS}
    for tool, version, settings in read_tsv("tools.tsv", 3):
        results.setdefault(tool, {"status": "not run", "steps": {}})
        results[tool].update(version=version, settings=settings)
    for tool, step, status, secs, rss, repo, code, note in read_tsv("results-files.tsv", 8):
        r = results.setdefault(tool, {"status": "not run", "steps": {}})
        if status == "skipped":
            r.update(status="skipped", reason=note)
            continue
        data = s["v1"]["bytes"] if step == "backup_v1" else s["v2"]["bytes"]
        secs = num(secs)
        r["steps"][step] = {
            "status": status, "seconds": secs, "data_bytes": data,
            "mb_per_s": round(data / 1e6 / secs, 1) if secs else None,
            "peak_rss_kib": num(rss, int), "repo_bytes": num(repo, int),
            "exit_code": num(code, int), "note": note}
        r["status"] = "failed" if status == "failed" or r["status"] == "failed" else "ok"
    return results


def fmt(v, f="{:.1f}"):
    return "-" if v is None else f.format(v)


def print_table(results):
    print(f"{'tool':9s} {'step':25s} {'seconds':>8s} {'MB/s':>7s} {'peak RSS MiB':>12s} "
          f"{'repo MiB':>9s}  notes")
    for tool, r in results.items():
        if r["status"] in ("skipped", "not run"):
            print(f"{tool:9s} {r['status']}: {r.get('reason', '')}".rstrip(": "))
            continue
        for step, label in STEPS + [("init", "init")]:
            st = r["steps"].get(step)
            if not st:
                continue
            rss = st["peak_rss_kib"] / 1024 if st["peak_rss_kib"] is not None else None
            repo = st["repo_bytes"] / MiB if st["repo_bytes"] is not None else None
            note = st["note"] if st["status"] == "ok" else f"FAILED (exit {st['exit_code']}) {st['note']}"
            print(f"{tool:9s} {label:25s} {fmt(st['seconds'], '{:.2f}'):>8s} {fmt(st['mb_per_s']):>7s} "
                  f"{fmt(rss):>12s} {fmt(repo):>9s}  {note}")


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def ratios(results):
    """lifeboat / other for throughput, repository size and peak RSS."""
    lb = results.get("lifeboat", {}).get("steps", {})

    def get(steps, step, key):
        st = steps.get(step)
        return st[key] if st and st["status"] == "ok" else None

    def peak(steps):
        vals = [st["peak_rss_kib"] for st in steps.values()
                if st["status"] == "ok" and st["peak_rss_kib"] is not None]
        return max(vals) if vals else None

    out = {}
    for other in TOOLS[1:]:
        o = results.get(other, {}).get("steps", {})
        out[other] = {
            "first_backup_throughput": ratio(get(lb, "backup_v1", "mb_per_s"), get(o, "backup_v1", "mb_per_s")),
            "v2_backup_seconds": ratio(get(lb, "backup_v2", "seconds"), get(o, "backup_v2", "seconds")),
            "unchanged_backup_seconds": ratio(get(lb, "backup_unchanged", "seconds"),
                                              get(o, "backup_unchanged", "seconds")),
            "restore_throughput": ratio(get(lb, "restore", "mb_per_s"), get(o, "restore", "mb_per_s")),
            "repo_size_after_v1": ratio(get(lb, "backup_v1", "repo_bytes"), get(o, "backup_v1", "repo_bytes")),
            "repo_size_after_v2": ratio(get(lb, "backup_v2", "repo_bytes"), get(o, "backup_v2", "repo_bytes")),
            "peak_rss": ratio(peak(lb), peak(o)),
        }
    return out


def print_ratios(rs):
    print("lifeboat vs others (throughput: >1 = lifeboat faster; seconds, size, RSS: <1 = lifeboat smaller):")
    print(f"  {'vs':7s} {'1st backup MB/s':>15s} {'v2 backup s':>11s} {'no-change s':>11s} "
          f"{'restore MB/s':>12s} {'repo size v1':>12s} {'repo size v2':>12s} {'peak RSS':>9s}")
    for other, r in rs.items():
        cells = [fmt(r[k], "{:.2f}") for k in ("first_backup_throughput", "v2_backup_seconds",
                                                 "unchanged_backup_seconds", "restore_throughput",
                                                 "repo_size_after_v1", "repo_size_after_v2", "peak_rss")]
        print(f"  {other:7s} {cells[0]:>15s} {cells[1]:>11s} {cells[2]:>11s} {cells[3]:>12s} "
              f"{cells[4]:>12s} {cells[5]:>12s} {cells[6]:>9s}")
    if all(v is None for r in rs.values() for v in r.values()):
        print("  (no ratios: lifeboat or the other tools did not run)")


def report():
    s = summary()
    results = collect(s)
    rs = ratios(results)
    env = os.environ
    doc = {
        "benchmark": "files",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "settings": {"bench_dir": BENCH_DIR, "scale": s["scale"], "seed": s["seed"],
                     "page_cache": "dropped before each step" if env.get("BENCH_DROP_CACHES") == "1" else "warm",
                     "verify_restore": env.get("BENCH_VERIFY") == "1",
                     "mb": "10^6 bytes; MB/s = data set bytes / seconds (v1 for the first backup, v2 otherwise)",
                     "peak_rss": "GNU time %M (max resident set size, KiB)",
                     "repo_bytes": "du -sb of the repository directory after the step (local caches excluded)"},
        "dataset": s,
        "results": results,
        "ratios_lifeboat_vs": rs,
    }
    print("results (MB = 10^6 bytes; MB/s = data set bytes / wall seconds; "
          f"page cache {doc['settings']['page_cache']}):")
    print_table(results)
    for tool, r in results.items():
        if r.get("version"):
            print(f"  {tool}: {r['version']}; {r.get('settings', '')}")
    print()
    print_ratios(rs)
    out = os.path.join(BENCH_DIR, "results-files.json")
    with open(out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"\nJSON: {out}   logs: {os.path.join(BENCH_DIR, 'logs')}")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "machine":
        print_machine(machine())
    elif mode == "dataset":
        print_dataset(summary())
    elif mode == "report":
        report()
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
