/* How many CPUs this process may really use, for workers = 0. The online count is the node's:
 * in a container limited to one CPU on a 64-core node it would start 64 threads. So: the CPUs
 * of our affinity mask, capped by a CFS quota (cgroup v2 cpu.max, or v1 cfs_quota/period),
 * rounded up. */
#include "cfg_internal.h"

#include <sched.h>
#include <stdio.h>
#include <unistd.h>

/* quota/period rounded up, or 0 when the file is absent or says "max" / -1. */
static unsigned quota_cpus(const char *quota_path, const char *period_path)
{
    long long quota = 0, period = 0;
    FILE *f = fopen(quota_path, "r");
    if (!f)
        return 0;
    int n = fscanf(f, "%lld %lld", &quota, &period); /* v2: "200000 100000" or "max 100000" */
    fclose(f);
    if (n < 1 || quota <= 0)
        return 0;
    if (period_path) { /* v1 keeps the period in its own file */
        f = fopen(period_path, "r");
        if (!f)
            return 0;
        n = fscanf(f, "%lld", &period);
        fclose(f);
        if (n != 1)
            return 0;
    }
    if (period <= 0)
        return 0;
    return (unsigned)((quota + period - 1) / period);
}

unsigned cfg_usable_cpus(void)
{
    unsigned cpus = 0;
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        cpus = (unsigned)CPU_COUNT(&set);
    if (cpus == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        cpus = online > 0 ? (unsigned)online : 1;
    }
    unsigned quota = quota_cpus("/sys/fs/cgroup/cpu.max", NULL);
    if (quota == 0)
        quota = quota_cpus("/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                           "/sys/fs/cgroup/cpu/cpu.cfs_period_us");
    return quota > 0 && quota < cpus ? quota : cpus;
}
