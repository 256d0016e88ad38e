// Identifiers with the driver's own escaping; values always travel as parameters.
import pg from "pg";

export const ident = (name: string): string => pg.escapeIdentifier(name);
export const literal = (value: string): string => pg.escapeLiteral(value);
export const qualified = (schema: string, name: string): string => `${ident(schema)}.${ident(name)}`;
