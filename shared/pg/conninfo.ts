// A database name handed to a native tool always travels inside a conninfo string: a bare name containing
// "=" or starting with "postgresql://" would otherwise be read as connection parameters.
export function conninfoValue(value: string): string {
  return `'${value.replace(/\\/g, "\\\\").replace(/'/g, "\\'")}'`;
}

export function dbnameArg(database: string): string {
  return `--dbname=dbname=${conninfoValue(database)}`;
}
