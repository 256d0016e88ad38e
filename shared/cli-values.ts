// Parsers for command-line values: a bad value is refused with a message that names its flag.
import { InvalidArgumentError } from "commander";

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1) {
    throw new InvalidArgumentError(`must be a whole number of at least 1, got ${JSON.stringify(value)}`);
  }
  return n;
}

export function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n)) {
    throw new InvalidArgumentError(`must be a whole number of at least 0, got ${JSON.stringify(value)}`);
  }
  return n;
}

export function port(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || n < 1 || n > 65535) {
    throw new InvalidArgumentError(`must be a port number from 1 to 65535, got ${JSON.stringify(value)}`);
  }
  return n;
}

export function bool(value: string): boolean {
  const v = value.trim().toLowerCase();
  if (["true", "yes", "on", "1"].includes(v)) return true;
  if (["false", "no", "off", "0"].includes(v)) return false;
  throw new InvalidArgumentError(`must be true or false, got ${JSON.stringify(value)}`);
}

export function nonEmpty(value: string): string {
  if (!value.trim()) throw new InvalidArgumentError("must not be empty");
  return value;
}
