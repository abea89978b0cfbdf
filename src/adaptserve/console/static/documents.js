// Text helpers for the templates admin page: a stored template document (JSON) written
// as YAML for editing, and a line diff of two texts (no library: a longest common
// subsequence over lines).

const RESERVED = /^(true|false|null|yes|no|on|off|y|n|~)$/i;
const PLAIN_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;
const PLAIN_TEXT = /^[A-Za-z][A-Za-z0-9_-]*( [A-Za-z0-9_-]+)*$/;

// A string as YAML: plain where that reads back as the same string, else a JSON string
// (a JSON string is a YAML double-quoted scalar).
function scalar(value) {
  if (typeof value === "string") return PLAIN_TEXT.test(value) && !RESERVED.test(value) ? value : JSON.stringify(value);
  return JSON.stringify(value ?? null);
}

const key = (name) => (PLAIN_KEY.test(name) && !RESERVED.test(name) ? name : JSON.stringify(name));
const empty = (value) => (Array.isArray(value) ? !value.length : value !== null && typeof value === "object" && !Object.keys(value).length);
const nested = (value) => value !== null && typeof value === "object" && !empty(value);

function lines(value, indent) {
  if (Array.isArray(value)) {
    return value.flatMap((item) => {
      if (!nested(item)) return [`${indent}- ${empty(item) ? JSON.stringify(item) : scalar(item)}`];
      const inner = lines(item, `${indent}  `);
      return [`${indent}- ${inner[0].slice(indent.length + 2)}`, ...inner.slice(1)];
    });
  }
  return Object.entries(value).flatMap(([name, item]) => {
    if (!nested(item)) return [`${indent}${key(name)}: ${empty(item) ? JSON.stringify(item) : scalar(item)}`];
    return [`${indent}${key(name)}:`, ...lines(item, `${indent}  `)];
  });
}

// A JSON document (an object) → YAML text that reads back as the same document.
export function toYaml(document) {
  return `${lines(document, "").join("\n")}\n`;
}

const MAX_CELLS = 4_000_000; // lines × lines: beyond it, the diff says so rather than hang the tab

// The lines of `before` and `after` as [sign, line] pairs: " " kept, "-" removed, "+" added.
export function lineDiff(before, after) {
  const a = before.split("\n");
  const b = after.split("\n");
  if (a.length * b.length > MAX_CELLS) return null;
  const width = b.length + 1;
  const common = new Uint32Array((a.length + 1) * width); // common[i][j]: LCS of a[i:] and b[j:]
  for (let i = a.length - 1; i >= 0; i--) {
    for (let j = b.length - 1; j >= 0; j--) {
      common[i * width + j] = a[i] === b[j] ? common[(i + 1) * width + j + 1] + 1 : Math.max(common[(i + 1) * width + j], common[i * width + j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (i < a.length && j < b.length && a[i] === b[j]) {
      out.push([" ", a[i++]]);
      j++;
    } else if (i < a.length && (j === b.length || common[(i + 1) * width + j] >= common[i * width + j + 1])) {
      out.push(["-", a[i++]]); // removed lines first, as diff shows them
    } else {
      out.push(["+", b[j++]]);
    }
  }
  return out;
}
