/* The memory limit of this process's cgroup, for the default memory_limit. A container runtime
 * puts the process in a cgroup whose limit the kernel's OOM killer enforces; dbtrust sheds load
 * before reaching it. Both hierarchies: v2 (one tree, memory.max) and v1 (the memory controller's
 * tree, memory.limit_in_bytes, where "unlimited" is a huge number). The path comes from
 * /proc/self/cgroup; without a cgroup namespace it is the full path from the root, so the
 * limits of the parents count too (the lowest one applies). */
#include "cfg_internal.h"

#include <stdio.h>
#include <string.h>

/* v1 reports "no limit" as a page-rounded LLONG_MAX; anything this large means none. */
#define UNLIMITED (UINT64_C(1) << 60)

static uint64_t read_limit(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char buf[64] = "";
    bool ok = fgets(buf, sizeof(buf), f) != NULL;
    fclose(f);
    unsigned long long v;
    if (!ok || strncmp(buf, "max", 3) == 0 || sscanf(buf, "%llu", &v) != 1 || v == 0 ||
        v >= UNLIMITED)
        return 0;
    return v;
}

/* The lowest limit at dir/<path> and each of its parents, file being the limit's name. */
static uint64_t lowest_along(const char *root, const char *cg_path, const char *file)
{
    char path[4096];
    dbt_strlcpy(path, cg_path, sizeof(path));
    uint64_t lowest = 0;
    for (;;) {
        char full[4600];
        snprintf(full, sizeof(full), "%s%s/%s", root, strcmp(path, "/") == 0 ? "" : path, file);
        uint64_t v = read_limit(full);
        if (v > 0 && (lowest == 0 || v < lowest))
            lowest = v;
        char *slash = strrchr(path, '/');
        if (slash == NULL || strcmp(path, "/") == 0)
            break;
        if (slash == path)
            path[1] = '\0';
        else
            *slash = '\0';
    }
    return lowest;
}

/* This process's memory cgroup: its hierarchy root and path from /proc/self/cgroup. */
static bool own_cgroup(const char **root, char *path, size_t cap)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (!f)
        return false;
    char line[4200], v1[4096] = "", v2[4096] = "";
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *ctrl = strchr(line, ':');
        char *p = ctrl ? strchr(ctrl + 1, ':') : NULL;
        if (!p)
            continue;
        *p++ = '\0';
        ctrl++;
        if (ctrl[0] == '\0')
            dbt_strlcpy(v2, p, sizeof(v2)); /* "0::/path" */
        else if (strstr(ctrl, "memory") != NULL)
            dbt_strlcpy(v1, p, sizeof(v1)); /* "4:memory:/path" */
    }
    fclose(f);
    *root = v1[0] ? "/sys/fs/cgroup/memory" : "/sys/fs/cgroup";
    dbt_strlcpy(path, v1[0] ? v1 : v2, cap);
    return path[0] != '\0';
}

uint64_t cfg_cgroup_memory_limit(void)
{
    const char *root;
    char path[4096];
    if (!own_cgroup(&root, path, sizeof(path)))
        return 0;
    bool v1 = strcmp(root, "/sys/fs/cgroup/memory") == 0;
    return lowest_along(root, path, v1 ? "memory.limit_in_bytes" : "memory.max");
}

int cfg_cgroup_memory_usage_path(char *out, size_t cap)
{
    const char *root;
    char path[4096];
    if (!own_cgroup(&root, path, sizeof(path)))
        return -1;
    bool v1 = strcmp(root, "/sys/fs/cgroup/memory") == 0;
    int n = snprintf(out, cap, "%s%s/%s", root, strcmp(path, "/") == 0 ? "" : path,
                     v1 ? "memory.usage_in_bytes" : "memory.current");
    return n > 0 && (size_t)n < cap ? 0 : -1;
}
