"""Smoke test of a built dbtrust image without a container runtime (scripts/container-test).

Given the image's mounted filesystem and its `podman image inspect` JSON, this:
- checks the image config: non-root USER, HEALTHCHECK, ENTRYPOINT/CMD;
- starts a TLS-only PostgreSQL 15 from the integration fixtures;
- mounts a config + CA bundle over the image's /etc/dbtrust (as the Kubernetes example does),
  in a private mount namespace so nothing leaks onto the host;
- runs the image's ENTRYPOINT + CMD, chrooted into the image as the image's USER, so the
  image's own binary, libraries (OpenSSL, libuv...) and user are what is tested;
- proves a psql query passes through it with TLS on the server side, a listener with a bundle
  lacking the server's root fails closed, the HEALTHCHECK command (the image's bash) and
  /readyz answer, and SIGTERM ends it cleanly.

Not a ctest suite (no test_ prefix): it needs a built image. Run scripts/container-test.
"""

import argparse
import json
import os
import shlex
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dbtrust_fixtures as fx  # noqa: E402

T0 = time.monotonic()


def step(text):
    print(f"[{time.monotonic() - T0:6.2f}s] {text}", flush=True)


def image_config(inspect_path):
    """(user, argv, healthcheck argv) from `podman image inspect` output, checked."""
    with open(inspect_path) as f:
        info = json.load(f)[0]
    config = info.get("Config", {})
    user = config.get("User", "")
    assert user and user.split(":")[0] not in ("", "0", "root"), f"image runs as root: {user!r}"
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER should be numeric so runAsNonRoot can check it: {user!r}"
    entrypoint, cmd = config.get("Entrypoint") or [], config.get("Cmd") or []
    assert entrypoint == ["dbtrust"], f"ENTRYPOINT {entrypoint}"
    assert cmd == ["--config", "/etc/dbtrust/dbtrust.ini"], f"CMD {cmd}"
    health = (info.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test") or []
    assert health and health[0] == "CMD" and "/healthz" in " ".join(health), \
        f"HEALTHCHECK missing or not on /healthz: {health}"
    path = next((e.split("=", 1)[1] for e in config.get("Env", []) if e.startswith("PATH=")),
                "/usr/sbin:/usr/bin:/sbin:/bin")
    return int(uid), int(gid or uid), entrypoint + cmd, health[1:], path


def chrooted(rootfs, uid, gid, argv, mounts=()):
    """argv run inside rootfs as uid:gid; `mounts` (host dir, path in image) are bind-mounted
    in a private mount namespace that dies with the process. exec all the way down, so the
    pid we get is dbtrust's own."""
    script = "set -e; "
    for i, (_, target) in enumerate(mounts):
        script += f'mount --bind "${{{i + 1}}}" {shlex.quote(rootfs + target)}; '
    script += f"exec chroot --userspec={uid}:{gid} {shlex.quote(rootfs)} " + \
        " ".join(shlex.quote(a) for a in argv)
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"] + \
        [src for src, _ in mounts]


def http_status(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rootfs", required=True, help="mounted image filesystem")
    ap.add_argument("--inspect", required=True, help="podman image inspect JSON")
    args = ap.parse_args()
    rootfs = os.path.realpath(args.rootfs)

    uid, gid, argv, health, path = image_config(args.inspect)
    step(f"image config ok: user {uid}:{gid}, {' '.join(argv)}, healthcheck {health[:2]}...")

    work = fx.make_temp_dir("container")
    pki = fx.TestPKI(os.path.join(work, "pki"))
    pg = fx.PostgresServer(pki.leaf, name="container-pg").start().provision_app_roles()
    step(f"postgres up on 127.0.0.1:{pg.port} (TLS only, leaf under root A)")

    # What the image sees at /etc/dbtrust: config + bundle, readable by the image's user only
    # through world-read bits (as a ConfigMap volume is).
    etc = os.path.join(work, "etc-dbtrust")
    os.mkdir(etc)
    os.chmod(work, 0o755)
    os.chmod(etc, 0o755)
    for name, source in (("ca-bundle.pem", pki.bundle),
                         ("root-b-only.pem", pki.write_bundle("b.pem", [pki.root_b]))):
        with open(source) as src, open(os.path.join(etc, name), "w") as dst:
            dst.write(src.read())
        os.chmod(os.path.join(etc, name), 0o644)
    admin_port = fx.free_port()
    config = fx.DbTrustConfig("/etc/dbtrust/ca-bundle.pem", workers=2,
                              admin=f"127.0.0.1:{admin_port}")
    # An IP upstream verified against the name in the certificate: no resolver needed in the
    # chroot, and the host name check still runs.
    good = config.add_listener("orders", "postgres", f"127.0.0.1:{pg.port}",
                               server_name="localhost")
    bad = config.add_listener("wrong-ca", "postgres", f"127.0.0.1:{pg.port}",
                              server_name="localhost", bundle="/etc/dbtrust/root-b-only.pem")
    config.write(os.path.join(etc, "dbtrust.ini"))
    os.chmod(os.path.join(etc, "dbtrust.ini"), 0o644)

    full = chrooted(rootfs, uid, gid, argv, mounts=[(etc, "/etc/dbtrust")])
    proxy = fx.DbTrust(full[0], full[1:], [good.port, bad.port], work, name="image-dbtrust")
    os.environ["PATH"] = path + ":" + os.environ.get("PATH", "")
    started = time.monotonic()
    proxy.start(timeout=15)
    step(f"image dbtrust listening after {time.monotonic() - started:.2f}s (pid {proxy.proc.pid})")

    with open(f"/proc/{proxy.proc.pid}/status") as f:
        ids = {line.split(":")[0]: line.split()[1:] for line in f
               if line.startswith(("Uid", "Gid"))}
    exe = os.readlink(f"/proc/{proxy.proc.pid}/exe")
    assert ids["Uid"][0] == str(uid) and ids["Gid"][0] == str(gid), f"runs as {ids}"
    assert exe.startswith(rootfs), f"not the image's binary: {exe}"
    step(f"runs as uid {uid} gid {gid}, binary {exe[len(rootfs):]} of the image")

    conninfo = fx.pg_conninfo(host="127.0.0.1", port=good.port, user=fx.PG_APP_USER,
                              dbname=fx.PG_APP_DATABASE, sslmode="disable")
    started = time.monotonic()
    result = fx.run_psql(conninfo, "select current_user || ' ' || ssl::text || ' ' || version "
                         "from pg_stat_ssl where pid = pg_backend_pid()",
                         password=fx.PG_APP_PASSWORD)
    assert result.returncode == 0, f"psql through the image failed: {result.stderr}"
    user, tls, version = result.stdout.strip().split(" ", 2)
    assert (user, tls) == (fx.PG_APP_USER, "true"), result.stdout
    assert version.startswith("TLSv1."), result.stdout
    step(f"psql through the image: user={user}, server saw TLS={tls} {version} "
         f"({time.monotonic() - started:.2f}s)")

    conninfo = fx.pg_conninfo(host="127.0.0.1", port=bad.port, user=fx.PG_APP_USER,
                              dbname=fx.PG_APP_DATABASE, sslmode="disable")
    result = fx.run_psql(conninfo, "select 1", password=fx.PG_APP_PASSWORD)
    assert result.returncode != 0 and "tls_untrusted_chain" in result.stderr, \
        f"wrong-CA listener did not fail closed: rc={result.returncode} {result.stderr}"
    step("listener with the wrong root fails closed: tls_untrusted_chain")

    # The image's HEALTHCHECK command, run by the image's bash; only the port differs (the
    # test cannot rely on 9187 being free on this host).
    probe = [a.replace("/9187", f"/{admin_port}") for a in health]
    started = time.monotonic()
    rc = fx.run(chrooted(rootfs, uid, gid, probe), check=False, timeout=10).returncode
    assert rc == 0, f"HEALTHCHECK command failed with {rc}: {probe}"
    down = fx.run(chrooted(rootfs, uid, gid, [a.replace("/9187", f"/{fx.free_port()}")
                                              for a in health]), check=False, timeout=10)
    assert down.returncode != 0, "HEALTHCHECK passes against a closed port"
    step(f"HEALTHCHECK command passes ({time.monotonic() - started:.2f}s), fails on a closed port")
    status, body = http_status(admin_port, "/readyz")
    assert status == 200, f"/readyz {status} {body}"
    step("/readyz 200")

    started = time.monotonic()
    proxy.stop(timeout=10)
    assert proxy.proc.returncode == 0, f"exit status {proxy.proc.returncode}"
    step(f"SIGTERM: exited 0 after {time.monotonic() - started:.2f}s")
    fx.run_cleanups()
    if fx.PROCESS_PROBLEMS:
        print("\n".join(fx.PROCESS_PROBLEMS), file=sys.stderr)
        return 1
    step("container check passed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"FAIL: {e}", file=sys.stderr)
        fx.run_cleanups()
        sys.exit(1)
