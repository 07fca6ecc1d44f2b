// Parse Mermaid diagrams with the real mermaid package (npm), under node.
// Usage: node mermaid_parse.mjs <dir with node_modules/mermaid and jsdom>  < JSON array of texts
// Prints a JSON array of {ok, type} / {ok: false, error}, one per text.
import { createRequire } from "node:module";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const dir = process.argv[2];
const require = createRequire(join(dir, "package.json"));
const { JSDOM } = require("jsdom");  // mermaid reaches for a DOM (DOMPurify) even to parse
const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import(pathToFileURL(join(dir, "node_modules", "mermaid", "dist", "mermaid.core.mjs")));
mermaid.initialize({ startOnLoad: false });

let input = "";
for await (const chunk of process.stdin) input += chunk;
const out = [];
for (const text of JSON.parse(input)) {
  try {
    const result = await mermaid.parse(text);
    out.push({ ok: true, type: result && result.diagramType });
  } catch (err) {
    out.push({ ok: false, error: String((err && err.message) || err) });
  }
}
process.stdout.write(JSON.stringify(out) + "\n");
