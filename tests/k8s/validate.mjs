// Offline validation of the Kubernetes manifests: every object of every YAML file against the
// Kubernetes OpenAPI schema (kubernetes-models), plus checks the schema alone lacks:
//   - unknown fields: the schema allows them, the API server (strict field validation, the
//     kubectl default) rejects them, and a typo such as `readinessprobe` would otherwise pass;
//   - scalars that YAML 1.1 (what kubectl's parser follows) and YAML 1.2 read differently
//     (`0440`, `on`, `yes`): the objects are checked as kubectl reads them, and the ambiguity
//     is reported because other tools would read another value;
//   - within one set of files (a directory, applied together):
//       ConfigMaps a workload mounts are defined in the set;
//       probes, Services and NetworkPolicies name container ports that exist;
//       Services, PodDisruptionBudgets and NetworkPolicies select a workload's pods, and a
//       budget leaves a pod to evict;
//       dbtrust's own configuration (dbtrust.ini, read from the ConfigMap it is mounted from):
//       every file it names is provided by a volume of the dbtrust container, no such volume
//       is mounted with subPath (never updated, so never reloaded), the admin endpoint the
//       probes use is reachable on the pod IP, and a Service port reaches a listener that is
//       not on loopback.
// Before the files, broken objects and broken sets are fed through the same checks: each must
// be reported, or the validator itself is broken and nothing it says can be trusted.
//   node validate.mjs [FILE.yaml...]     one set of files
//   node validate.mjs                    docker/kubernetes/*.yaml, then each subdirectory of it
//                                        (docker/kubernetes/central/...) as a set of its own
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));
const defaultDir = resolve(here, "../../docker/kubernetes");

// ---------------------------------------------------------------------------------------------
// One object against the schema

// "apps/v1" -> kubernetes-models/apps/v1, "v1" -> kubernetes-models/v1.
async function modelClass(apiVersion, kind) {
  if (typeof apiVersion !== "string" || !/^[a-z0-9.-]+(\/v[0-9a-z]+)?$/.test(apiVersion))
    throw new Error(`bad apiVersion ${JSON.stringify(apiVersion)}`);
  let mod;
  try {
    mod = await import(`kubernetes-models/${apiVersion}`);
  } catch {
    throw new Error(`unknown apiVersion ${apiVersion}`);
  }
  if (typeof mod[kind] !== "function") throw new Error(`unknown kind ${apiVersion}/${kind}`);
  return mod[kind];
}

// A view of `value` that records the path of every property the schema validator reads. The
// compiled validator reads each property its schema knows (and every entry of a map), so an
// own property it never read is one the schema does not define.
function tracked(value, path, seen) {
  if (value === null || typeof value !== "object") return value;
  return new Proxy(value, {
    get(target, key, receiver) {
      if (typeof key === "string") seen.add(`${path}/${key}`);
      return tracked(Reflect.get(target, key, receiver), `${path}/${String(key)}`, seen);
    },
  });
}

// Own property paths the validator never read; below such a path nothing is reported again.
function unreadPaths(value, seen, path = "", out = []) {
  if (value === null || typeof value !== "object") return out;
  for (const [key, child] of Object.entries(value)) {
    const p = `${path}/${key}`;
    if (seen.has(p)) unreadPaths(child, seen, p, out);
    else out.push(p);
  }
  return out;
}

// Problems of one object (empty = valid).
async function objectProblems(obj) {
  if (obj === null || typeof obj !== "object" || Array.isArray(obj)) return ["not a mapping"];
  let Model;
  try {
    Model = await modelClass(obj.apiVersion, obj.kind);
  } catch (e) {
    return [e.message];
  }
  const model = new Model(obj); // copies obj; validate() reads the copy
  const seen = new Set();
  try {
    tracked(model, "", seen).validate();
  } catch (e) {
    return (e.errors ?? [{ instancePath: "", message: e.message }]).map(
      (err) => `${err.instancePath || "/"} ${err.message}`,
    );
  }
  // Only after a clean schema pass: a failing validator may stop reading mid-object.
  return unreadPaths(model, seen).map(
    (p) => `${p} is not a field of ${obj.apiVersion}/${obj.kind}`,
  );
}

// ---------------------------------------------------------------------------------------------
// Parsing: YAML 1.1 is what kubectl reads; 1.2 is what most other tools read

// First path where a and b differ, or null.
function firstDifference(a, b, path = "") {
  if (Object.is(a, b)) return null;
  const objA = a !== null && typeof a === "object";
  const objB = b !== null && typeof b === "object";
  if (!objA || !objB || Array.isArray(a) !== Array.isArray(b)) return path || "/";
  for (const key of new Set([...Object.keys(a), ...Object.keys(b)])) {
    const d = firstDifference(a[key], b[key], `${path}/${key}`);
    if (d) return d;
  }
  return null;
}

// Objects of one YAML text: [{obj, problems}] (obj null for a document that does not parse).
function parseObjects(text) {
  const as11 = parseAllDocuments(text, { version: "1.1" });
  const as12 = parseAllDocuments(text, { version: "1.2" });
  const out = [];
  as11.forEach((doc, i) => {
    if (doc.errors.length) {
      out.push({ obj: null, problems: doc.errors.map((e) => e.message) });
      return;
    }
    const obj = doc.toJS();
    if (obj === null) return; // an empty document (trailing ---)
    const problems = [];
    const other = as12[i] && !as12[i].errors.length ? as12[i].toJS() : undefined;
    const diff = firstDifference(obj, other);
    if (diff) {
      problems.push(
        `${diff} reads differently in YAML 1.1 (kubectl: ${JSON.stringify(valueAt(obj, diff))}) ` +
          `and YAML 1.2 (${JSON.stringify(valueAt(other, diff))}): ` +
          "write a number in decimal, quote a string",
      );
    }
    out.push({ obj, problems });
  });
  return out;
}

function valueAt(value, path) {
  for (const key of path.split("/").filter(Boolean)) value = value?.[key];
  return value;
}

// ---------------------------------------------------------------------------------------------
// Checks across the objects of one set

function name(obj) {
  return `${obj?.kind ?? "?"}/${obj?.metadata?.name ?? "?"}`;
}

const workloadKinds = new Set(["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"]);

function podSpec(obj) {
  return workloadKinds.has(obj?.kind) ? obj?.spec?.template?.spec : undefined;
}

function podContainers(obj) {
  const spec = podSpec(obj) ?? {};
  return [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
}

function isDbtrust(container) {
  return /(^|\/)dbtrust([:@]|$)/.test(container?.image ?? "");
}

// True when every label of matchLabels is on the workload's pods. Selectors made of
// matchExpressions only are not understood here and select nothing (so they are reported).
function selects(matchLabels, workload) {
  const labels = workload?.spec?.template?.metadata?.labels ?? {};
  const wanted = Object.entries(matchLabels ?? {});
  return wanted.length > 0 && wanted.every(([k, v]) => labels[k] === v);
}

// A container port of the pod by name or number: {container, port} or null.
function podPort(workload, ref) {
  for (const c of podContainers(workload)) {
    for (const p of c.ports ?? []) {
      if (typeof ref === "string" ? p.name === ref : p.containerPort === ref)
        return { container: c, port: p.containerPort };
    }
  }
  return null;
}

// Files a volume provides: Map(relative path -> text, or null when only the name is known),
// and `open` when its contents cannot be known from the set (a Secret created elsewhere).
function volumeFiles(volume, byKind) {
  const files = new Map();
  let open = false;
  const addConfigMap = (ref) => {
    const cm = byKind.ConfigMap.get(ref?.name);
    if (!cm) return; // reported as an undefined ConfigMap
    const data = { ...(cm.binaryData ?? {}), ...(cm.data ?? {}) };
    if (ref.items) for (const it of ref.items) files.set(it.path, data[it.key] ?? null);
    else for (const [k, v] of Object.entries(data)) files.set(k, typeof v === "string" ? v : null);
  };
  const addSecret = (ref, secretName) => {
    if (ref?.items) {
      for (const it of ref.items) files.set(it.path, null);
      return;
    }
    const s = byKind.Secret.get(secretName);
    if (!s) open = true;
    else
      for (const k of Object.keys({ ...(s.data ?? {}), ...(s.stringData ?? {}) }))
        files.set(k, null);
  };
  if (volume.configMap) addConfigMap(volume.configMap);
  else if (volume.secret) addSecret(volume.secret, volume.secret.secretName);
  else if (volume.projected) {
    for (const s of volume.projected.sources ?? []) {
      if (s.configMap) addConfigMap(s.configMap);
      else if (s.secret) addSecret(s.secret, s.secret.name);
      else open = true;
    }
  } else open = true; // emptyDir, persistent volumes...: written at run time
  return { files, open };
}

// Where an absolute path of a container comes from: {mount, volume, rel} of the deepest mount
// holding it, or null.
function mountFor(workload, container, path) {
  let best = null;
  for (const m of container.volumeMounts ?? []) {
    const mp = m.mountPath.replace(/\/+$/, "");
    if (path !== mp && !path.startsWith(`${mp}/`)) continue;
    if (best && best.mount.mountPath.length >= m.mountPath.length) continue;
    const volume = (podSpec(workload).volumes ?? []).find((v) => v.name === m.name);
    let rel = path === mp ? "" : path.slice(mp.length + 1);
    if (m.subPath) rel = rel ? `${m.subPath}/${rel}` : m.subPath;
    best = { mount: m, volume, rel };
  }
  return best;
}

// The file at `path` in the container: {found, text, mount} (text null when unknown).
function containerFile(workload, container, path, byKind) {
  const at = mountFor(workload, container, path);
  if (!at || !at.volume) return { found: false, text: null, mount: at?.mount };
  const { files, open } = volumeFiles(at.volume, byKind);
  if (files.has(at.rel)) return { found: true, text: files.get(at.rel), mount: at.mount };
  return { found: open, text: null, mount: at.mount };
}

// The parts of dbtrust.ini these checks need: addresses and file paths, each with its section.
const fileKeys = new Set(["bundle", "client_cert", "client_key", "client_ca", "mysql_rsa_key"]);
function parseIni(text) {
  const out = { admin: null, listens: [], files: [] };
  let section = "";
  for (const raw of text.split("\n")) {
    const line = raw.replace(/(^|\s)[;#].*$/, "").trim();
    if (!line) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) {
      section = sec[1].trim();
      continue;
    }
    const kv = /^([A-Za-z0-9_]+)\s*=\s*(.*)$/.exec(line);
    if (!kv) continue;
    const [, key, value] = kv;
    if (section === "dbtrust" && key === "admin") out.admin = value;
    else if (section.startsWith("listener.") && key === "listen")
      out.listens.push({ section, value });
    if (fileKeys.has(key) && value.startsWith("/")) out.files.push({ section, key, path: value });
  }
  return out;
}

// "0.0.0.0:5432", "[::]:5432" -> {host, port}; unix:/path -> null.
function parseAddress(value) {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d+)$/.exec(value ?? "");
  return m ? { host: m[1] ?? m[2], port: Number(m[3]) } : null;
}

function isLoopback(host) {
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}

// The configuration file a dbtrust container reads (--config in command/args, else the
// image's default).
function configPath(container) {
  const argv = [...(container.command ?? []), ...(container.args ?? [])];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--config" && i + 1 < argv.length) return argv[i + 1];
    if (argv[i].startsWith("--config=")) return argv[i].slice("--config=".length);
  }
  return "/etc/dbtrust/dbtrust.ini";
}

// dbtrust's configuration for a dbtrust container: {ini, problems}.
function dbtrustConfig(workload, container, byKind) {
  const problems = [];
  const where = `container ${container.name}`;
  const path = configPath(container);
  const conf = containerFile(workload, container, path, byKind);
  if (!conf.found || conf.text === null) {
    problems.push(`${where} reads ${path}, which no ConfigMap of this set provides`);
    return { ini: null, problems };
  }
  const ini = parseIni(conf.text);
  // The configuration itself is read at start only; the files it names are reloaded.
  for (const f of ini.files) {
    const file = containerFile(workload, container, f.path, byKind);
    if (!file.found) {
      problems.push(
        `${where}: [${f.section}] ${f.key} = ${f.path} is in no volume of the container`,
      );
    } else if (file.mount?.subPath) {
      problems.push(
        `${where}: ${f.path} is mounted with subPath, which the kubelet never updates ` +
          `(dbtrust would never see a change to reload)`,
      );
    }
  }
  return { ini, problems };
}

// Problems of the workloads' pods: probe ports, dbtrust's configuration.
function workloadProblems(workload, byKind) {
  const problems = [];
  for (const c of podContainers(workload)) {
    const dbtrust = isDbtrust(c) ? dbtrustConfig(workload, c, byKind) : null;
    if (dbtrust) problems.push(...dbtrust.problems);
    const admin = parseAddress(dbtrust?.ini?.admin);
    for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
      const ref = c[probe]?.httpGet?.port ?? c[probe]?.tcpSocket?.port;
      if (ref === undefined) continue;
      let port = ref;
      if (typeof ref === "string") {
        const p = (c.ports ?? []).find((x) => x.name === ref);
        if (!p) {
          problems.push(
            `container ${c.name} ${probe} uses port ${ref}, which the container does not name`,
          );
          continue;
        }
        port = p.containerPort;
      }
      if (!dbtrust?.ini) continue;
      if (!admin) {
        problems.push(
          `container ${c.name} ${probe} probes port ${port}, but dbtrust.ini has no admin endpoint`,
        );
      } else if (admin.port !== port) {
        problems.push(
          `container ${c.name} ${probe} probes port ${port}, ` +
            `dbtrust's admin endpoint is ${dbtrust.ini.admin}`,
        );
      } else if (isLoopback(admin.host)) {
        problems.push(
          `container ${c.name} ${probe}: admin = ${dbtrust.ini.admin} is loopback, ` +
            "the kubelet probes the pod IP",
        );
      }
    }
  }
  return problems;
}

// Workloads of the set whose pods the selector picks.
function selected(matchLabels, workloads) {
  return workloads.filter((w) => selects(matchLabels, w));
}

function serviceProblems(svc, workloads, byKind) {
  const problems = [];
  const targets = selected(svc.spec?.selector, workloads);
  if (targets.length === 0) {
    problems.push(
      `selector ${JSON.stringify(svc.spec?.selector ?? {})} ` +
        "matches the pods of no workload in this set",
    );
    return problems;
  }
  for (const w of targets) {
    for (const sp of svc.spec?.ports ?? []) {
      const ref = sp.targetPort ?? sp.port;
      const hit = podPort(w, ref);
      if (!hit) {
        problems.push(
          `port ${sp.name ?? sp.port} targets ${ref}, which no container of ${name(w)} declares`,
        );
        continue;
      }
      if (!isDbtrust(hit.container)) continue;
      const { ini } = dbtrustConfig(w, hit.container, byKind);
      if (!ini) continue; // reported with the workload
      const reachable = ini.listens.some((l) => {
        const a = parseAddress(l.value);
        return a && a.port === hit.port && !isLoopback(a.host);
      });
      if (!reachable) {
        problems.push(
          `port ${sp.name ?? sp.port} reaches dbtrust on ${hit.port}, where no listener of the ` +
            `dbtrust.ini of ${name(w)} listens on a pod address ` +
            "(loopback listeners cannot be reached through a Service)",
        );
      }
    }
  }
  return problems;
}

function budgetProblems(pdb, workloads) {
  const targets = selected(pdb.spec?.selector?.matchLabels, workloads);
  if (targets.length === 0) return ["selector matches the pods of no workload in this set"];
  const problems = [];
  const min = pdb.spec?.minAvailable;
  for (const w of targets) {
    const replicas = w.spec?.replicas ?? 1;
    if (typeof min === "number" && min >= replicas) {
      problems.push(
        `minAvailable ${min} with ${replicas} replicas of ${name(w)}: ` +
          "no pod may ever be evicted, node drains hang",
      );
    }
  }
  return problems;
}

function networkPolicyProblems(np, workloads) {
  const targets = selected(np.spec?.podSelector?.matchLabels, workloads);
  if (targets.length === 0) return ["podSelector matches the pods of no workload in this set"];
  const problems = [];
  for (const rule of np.spec?.ingress ?? []) {
    for (const p of rule.ports ?? []) {
      if (typeof p.port !== "string") continue;
      for (const w of targets) {
        if (!podPort(w, p.port))
          problems.push(`ingress allows port ${p.port}, which no container of ${name(w)} names`);
      }
    }
  }
  return problems;
}

function mountedConfigMaps(obj) {
  const names = [];
  for (const v of podSpec(obj)?.volumes ?? []) {
    if (v.configMap?.name) names.push(v.configMap.name);
    for (const s of v.projected?.sources ?? []) if (s.configMap?.name) names.push(s.configMap.name);
  }
  return names;
}

// Adds the cross-object problems to entries ([{label, obj, problems}]) of one set.
function checkSet(entries) {
  const byKind = { ConfigMap: new Map(), Secret: new Map() };
  for (const e of entries) {
    if (byKind[e.obj?.kind]) byKind[e.obj.kind].set(e.obj.metadata?.name, e.obj);
  }
  const workloads = entries.map((e) => e.obj).filter((o) => podSpec(o));
  for (const e of entries) {
    const o = e.obj;
    if (!o) continue;
    for (const cm of mountedConfigMaps(o)) {
      if (!byKind.ConfigMap.has(cm)) e.problems.push(`mounts ConfigMap ${cm}, defined in no file`);
    }
    if (podSpec(o)) e.problems.push(...workloadProblems(o, byKind));
    if (o.kind === "Service" && o.spec?.selector)
      e.problems.push(...serviceProblems(o, workloads, byKind));
    if (o.kind === "PodDisruptionBudget") e.problems.push(...budgetProblems(o, workloads));
    if (o.kind === "NetworkPolicy") e.problems.push(...networkPolicyProblems(o, workloads));
  }
  return entries;
}

// Entries of a list of files, schema and set checks included.
async function checkFiles(files, base) {
  const entries = [];
  for (const file of files) {
    for (const { obj, problems } of parseObjects(readFileSync(file, "utf8"))) {
      if (obj) problems.push(...(await objectProblems(obj)));
      entries.push({ label: `${base ? relative(base, file) : file} ${name(obj)}`, obj, problems });
    }
  }
  return checkSet(entries);
}

// ---------------------------------------------------------------------------------------------
// Self-tests: objects and sets that must fail

const container = { name: "c", image: "i" };
function deployment(podSpecValue) {
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: "broken" },
    spec: {
      selector: { matchLabels: { a: "b" } },
      template: { metadata: { labels: { a: "b" } }, spec: podSpecValue },
    },
  };
}
const mustFail = {
  "schema type error": deployment({
    containers: [{ ...container, ports: [{ containerPort: "admin" }] }],
  }),
  "missing required field": deployment({ containers: [{ image: "i" }] }),
  "unknown field (typo)": deployment({
    containers: [{ ...container, readinessprobe: { httpGet: { path: "/readyz", port: 9187 } } }],
  }),
  "unknown kind": { apiVersion: "v1", kind: "ConfigMapp", metadata: { name: "x" } },
};

// A small valid set in the shape of the central example; each mutation must be reported.
const goodIni = [
  "[dbtrust]",
  "admin = 0.0.0.0:9187",
  "[trust]",
  "bundle = /etc/dbtrust/ca-bundle.pem",
  "[listener.pg]",
  "listen = 0.0.0.0:5432 ; comment",
  "client_cert = /etc/dbtrust/tls/tls.crt",
  "client_key = /etc/dbtrust/tls/tls.key",
].join("\n");
function goodSet() {
  const labels = { app: "dbtrust" };
  const probe = { httpGet: { path: "/readyz", port: "admin" } };
  return [
    {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name: "conf" },
      data: { "dbtrust.ini": goodIni },
    },
    {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name: "bundle" },
      data: { "ca-bundle.pem": "x" },
    },
    {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "d" },
      spec: {
        replicas: 2,
        selector: { matchLabels: labels },
        template: {
          metadata: { labels },
          spec: {
            containers: [
              {
                name: "dbtrust",
                image: "registry.example.com/dbtrust:1",
                ports: [
                  { name: "postgres", containerPort: 5432 },
                  { name: "admin", containerPort: 9187 },
                ],
                readinessProbe: probe,
                volumeMounts: [
                  { name: "config", mountPath: "/etc/dbtrust" },
                  { name: "tls", mountPath: "/etc/dbtrust/tls" },
                ],
              },
            ],
            volumes: [
              {
                name: "config",
                projected: {
                  sources: [{ configMap: { name: "conf" } }, { configMap: { name: "bundle" } }],
                },
              },
              { name: "tls", secret: { secretName: "serving" } },
            ],
          },
        },
      },
    },
    {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "s" },
      spec: { selector: labels, ports: [{ name: "postgres", port: 5432, targetPort: "postgres" }] },
    },
    {
      apiVersion: "policy/v1",
      kind: "PodDisruptionBudget",
      metadata: { name: "p" },
      spec: { minAvailable: 1, selector: { matchLabels: labels } },
    },
    {
      apiVersion: "networking.k8s.io/v1",
      kind: "NetworkPolicy",
      metadata: { name: "n" },
      spec: { podSelector: { matchLabels: labels }, ingress: [{ ports: [{ port: "postgres" }] }] },
    },
  ];
}
const pod = (set) => set[2].spec.template.spec;
const setMustFail = {
  "ConfigMap mounted but not defined": (s) => s.splice(1, 1),
  "config file from no ConfigMap": (s) =>
    (pod(s).containers[0].args = ["--config", "/etc/other.ini"]),
  "configured file in no volume": (s) =>
    (s[0].data["dbtrust.ini"] = goodIni.replace("/etc/dbtrust/tls/tls.key", "/etc/tls/tls.key")),
  "reloaded file mounted with subPath": (s) => {
    pod(s).containers[0].volumeMounts[0] = {
      name: "config",
      mountPath: "/etc/dbtrust/ca-bundle.pem",
      subPath: "ca-bundle.pem",
    };
    pod(s).containers[0].volumeMounts.push({
      name: "config",
      mountPath: "/etc/dbtrust/dbtrust.ini",
      subPath: "dbtrust.ini",
    });
  },
  "probe on an unnamed port": (s) => (pod(s).containers[0].readinessProbe.httpGet.port = "admn"),
  "probe on a loopback admin endpoint": (s) =>
    (s[0].data["dbtrust.ini"] = goodIni.replace("0.0.0.0:9187", "127.0.0.1:9187")),
  "Service selecting no pods": (s) => (s[3].spec.selector = { app: "dbtrus" }),
  "Service to an undeclared port": (s) => (s[3].spec.ports[0].targetPort = "postgresql"),
  "Service to a loopback listener": (s) =>
    (s[0].data["dbtrust.ini"] = goodIni.replace("0.0.0.0:5432", "127.0.0.1:5432")),
  "budget that allows no eviction": (s) => (s[4].spec.minAvailable = 2),
  "NetworkPolicy on an unnamed port": (s) => (s[5].spec.ingress[0].ports[0].port = "pg"),
};

let failed = false;
const report = (ok, what) => {
  if (!ok) failed = true;
  console.log(`${ok ? "ok" : "not ok"} - ${what}`);
};
// A self-test passes when the broken input was reported.
const selfTest = (what, problems) =>
  report(
    problems.length > 0,
    `self-test: ${what} ${problems.length ? `detected (${problems[0]})` : "was not detected"}`,
  );

for (const [what, obj] of Object.entries(mustFail)) selfTest(what, await objectProblems(obj));
const control = await objectProblems(deployment({ containers: [container] }));
if (control.length)
  report(false, `self-test: a valid Deployment was rejected: ${control.join("; ")}`);

selfTest(
  "YAML 1.1/1.2 ambiguity",
  parseObjects("apiVersion: v1\nkind: X\nmode: 0440\n")[0].problems,
);

const setProblems = async (objs) => {
  const entries = [];
  for (const obj of objs)
    entries.push({ label: name(obj), obj, problems: await objectProblems(obj) });
  return checkSet(entries).flatMap((e) => e.problems.map((p) => `${e.label}: ${p}`));
};
const goodProblems = await setProblems(goodSet());
if (goodProblems.length)
  report(false, `self-test: a valid set was rejected: ${goodProblems.join("; ")}`);
for (const [what, mutate] of Object.entries(setMustFail)) {
  const s = goodSet();
  mutate(s);
  selfTest(what, await setProblems(s));
}

// ---------------------------------------------------------------------------------------------
// The files

const yamlIn = (dir) =>
  readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .sort()
    .map((f) => join(dir, f));

let sets;
if (process.argv.length > 2) {
  sets = [{ base: null, files: process.argv.slice(2) }];
} else {
  sets = [{ base: defaultDir, files: yamlIn(defaultDir) }];
  for (const d of readdirSync(defaultDir).sort()) {
    const sub = join(defaultDir, d);
    if (statSync(sub).isDirectory()) sets.push({ base: defaultDir, files: yamlIn(sub) });
  }
}
for (const set of sets) {
  if (set.files.length === 0) {
    report(false, "no YAML files in a set of docker/kubernetes");
    continue;
  }
  for (const e of await checkFiles(set.files, set.base)) {
    report(e.problems.length === 0, e.label);
    for (const p of e.problems) console.log(`    ${p}`);
  }
}
process.exit(failed ? 1 : 0);
