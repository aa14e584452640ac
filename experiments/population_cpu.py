"""CPU seconds used by the processes of given sessions (the `setsid` lanes of the population comparison).

    python experiments/population_cpu.py OUT.tsv SID [SID ...]

Every second it reads utime+stime of every process whose session id is one of SIDs (Ray's GCS, raylet and
workers stay in the session of the command that started Ray) and keeps each process's last value; every
10 s it appends ``unix_time  sid  cumulative_cpu_s`` lines to OUT.tsv. A process's CPU after its last
sample (< 1 s) is missed, so the totals are slight underestimates. /usr/bin/time cannot measure this:
Ray's workers are not reaped by the command it times.
"""

import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def main() -> None:
    out, sids = sys.argv[1], {int(s) for s in sys.argv[2:]}
    seen: dict[tuple[int, int], tuple[int, float]] = {}  # (pid, starttime) -> (sid, cpu seconds)
    last_write = 0.0
    while True:
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            sid = int(fields[3])
            if sid in sids:
                seen[(int(pid), int(fields[19]))] = (sid, (int(fields[11]) + int(fields[12])) / TICK)
        now = time.time()
        if now - last_write >= 10:
            last_write = now
            with open(out, "a") as f:
                for sid in sorted(sids):
                    f.write(f"{now:.1f}\t{sid}\t{sum(c for s, c in seen.values() if s == sid):.1f}\n")
        time.sleep(1)


if __name__ == "__main__":
    main()
