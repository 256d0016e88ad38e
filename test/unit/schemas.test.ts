// docs/schemas holds the JSON Schemas generated from the zod contracts; they must not drift apart.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { test } from "node:test";
import { jsonSchemas, render } from "../../shared/contracts/json-schemas.js";

test("the committed JSON Schemas are the ones the contracts generate (npm run schemas)", () => {
  for (const [name, schema] of Object.entries(jsonSchemas())) {
    const committed = readFileSync(fileURLToPath(new URL(`../../../docs/schemas/${name}`, import.meta.url)), "utf8");
    assert.equal(committed, render(schema), `docs/schemas/${name} is stale: run npm run schemas`);
  }
});
