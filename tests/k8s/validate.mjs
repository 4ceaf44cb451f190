// Offline validation of the Kubernetes manifests: every object of every YAML file against the
// Kubernetes OpenAPI schema (kubernetes-models), plus checks the schema alone lacks:
//   - unknown fields: the schema allows them, the API server (strict field validation, the
//     kubectl default) rejects them, and a typo such as `readinessprobe` would otherwise pass;
//   - ConfigMaps a Deployment mounts must be defined in the same set of files.
// Before the files, broken objects are fed through the same checks: each must be reported,
// or the validator itself is broken and nothing it says can be trusted.
//   node validate.mjs [FILE.yaml...]     default: docker/kubernetes/*.yaml
import { readdirSync, readFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

const here = dirname(fileURLToPath(import.meta.url));
const defaultDir = resolve(here, "../../docker/kubernetes");

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

function name(obj) {
  return `${obj?.kind ?? "?"}/${obj?.metadata?.name ?? "?"}`;
}

function mountedConfigMaps(obj) {
  const volumes = obj?.spec?.template?.spec?.volumes ?? [];
  const names = [];
  for (const v of volumes) {
    if (v.configMap?.name) names.push(v.configMap.name);
    for (const s of v.projected?.sources ?? []) if (s.configMap?.name) names.push(s.configMap.name);
  }
  return names;
}

// Objects of a file set, each with its problems; cross-object checks included.
async function check(files) {
  const results = [];
  for (const file of files) {
    for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
      if (doc.errors.length) {
        results.push({ file, obj: null, problems: doc.errors.map((e) => e.message) });
        continue;
      }
      const obj = doc.toJS();
      if (obj === null) continue; // an empty document (trailing ---)
      results.push({ file, obj, problems: await objectProblems(obj) });
    }
  }
  const configMaps = new Set(
    results.filter((r) => r.obj?.kind === "ConfigMap").map((r) => r.obj.metadata?.name),
  );
  for (const r of results) {
    for (const cm of mountedConfigMaps(r.obj)) {
      if (!configMaps.has(cm)) r.problems.push(`mounts ConfigMap ${cm}, defined in no file`);
    }
  }
  return results;
}

// Objects that must fail, one per kind of check.
const container = { name: "c", image: "i" };
function deployment(podSpec) {
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: "broken" },
    spec: {
      selector: { matchLabels: { a: "b" } },
      template: { metadata: { labels: { a: "b" } }, spec: podSpec },
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

let failed = false;
for (const [what, obj] of Object.entries(mustFail)) {
  const problems = await objectProblems(obj);
  if (problems.length === 0) {
    console.log(`not ok - self-test: ${what} was not detected`);
    failed = true;
  } else {
    console.log(`ok - self-test: ${what} detected (${problems[0]})`);
  }
}
const control = await objectProblems(deployment({ containers: [container] }));
if (control.length) {
  console.log(`not ok - self-test: a valid Deployment was rejected: ${control.join("; ")}`);
  failed = true;
}

const files = process.argv.length > 2
  ? process.argv.slice(2)
  : readdirSync(defaultDir)
      .filter((f) => /\.ya?ml$/.test(f))
      .sort()
      .map((f) => join(defaultDir, f));
if (files.length === 0) {
  console.log(`not ok - no YAML files in ${defaultDir}`);
  failed = true;
}
for (const r of await check(files)) {
  const label = `${basename(r.file)} ${name(r.obj)}`;
  if (r.problems.length) {
    failed = true;
    console.log(`not ok - ${label}`);
    for (const p of r.problems) console.log(`    ${p}`);
  } else {
    console.log(`ok - ${label}`);
  }
}
process.exit(failed ? 1 : 0);
