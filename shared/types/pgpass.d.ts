// The pgpass package (libpq's password file rules, used by node-postgres itself) ships no types.
declare module "pgpass" {
  interface ConnInfo {
    host: string;
    port: number | string;
    database: string;
    user: string;
  }
  function pgpass(connInfo: ConnInfo, cb: (password: string | undefined) => void): void;
  export default pgpass;
}
