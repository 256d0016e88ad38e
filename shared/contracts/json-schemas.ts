// The published contracts as JSON Schema (draft 2020-12), generated from the zod definitions: what a third-party
// NATS consumer validates against. `npm run schemas` writes them to docs/schemas; a unit test keeps them current.
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { z } from "zod";
import { schemas } from "./messages.js";
import { ReportSchema } from "./report.js";

export function jsonSchemas(): Record<string, unknown> {
  return {
    "event.schema.json": z.toJSONSchema(schemas.Event, { io: "input" }),
    "job.schema.json": z.toJSONSchema(schemas.Job, { io: "input" }),
    "manifest.schema.json": z.toJSONSchema(schemas.Manifest, { io: "input" }),
    "report.schema.json": z.toJSONSchema(ReportSchema, { io: "input" }),
  };
}

export function render(schema: unknown): string {
  return `${JSON.stringify(schema, null, 2)}\n`;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const dir = process.argv[2] ?? "docs/schemas";
  for (const [name, schema] of Object.entries(jsonSchemas())) writeFileSync(`${dir}/${name}`, render(schema));
}
