// The source for the core end-to-end test: Pagila and Chinook from the public corpus, a database with an
// awkward name, one that exercises what plain table copies miss, and roles with a membership and grants.
import type { LocalCluster } from "../../demo/cluster.js";
import { psqlExec } from "../../demo/cluster.js";
import { query } from "./cli.js";
import { loadChinook, loadPagila } from "./corpus.js";

export const ODD_NAME = `Odd "Db" O'Neil.x*>`;
export const APP_LOGIN_PASSWORD = "AppLogin-Pw-7731";

export async function loadCoreFixture(source: LocalCluster): Promise<void> {
  await loadPagila(source);
  await loadChinook(source, "plain");
  await psqlExec(
    source,
    "postgres",
    `CREATE ROLE app_group NOLOGIN;
     CREATE ROLE app_login LOGIN PASSWORD '${APP_LOGIN_PASSWORD}' CONNECTION LIMIT 7;
     GRANT app_group TO app_login;
     CREATE DATABASE "Odd ""Db"" O'Neil.x*>";
     CREATE DATABASE features OWNER app_login;`,
  );
  await psqlExec(
    source,
    ODD_NAME,
    `CREATE TABLE "we""ird table" (id int PRIMARY KEY, v text); INSERT INTO "we""ird table" SELECT g, 'v' || g FROM generate_series(1, 42) g;`,
  );
  await psqlExec(
    source,
    "features",
    `CREATE EXTENSION citext;
     CREATE TABLE people (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email citext UNIQUE, photo bytea);
     INSERT INTO people (email, photo) SELECT 'p' || g || '@example.org', decode(md5(g::text), 'hex') FROM generate_series(1, 250) g;
     CREATE SEQUENCE ticket_seq START 1000;
     SELECT nextval('ticket_seq') FROM generate_series(1, 17);
     CREATE TABLE measurements (at date NOT NULL, value numeric) PARTITION BY RANGE (at);
     CREATE TABLE measurements_2025 PARTITION OF measurements FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
     CREATE TABLE measurements_2026 PARTITION OF measurements FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
     INSERT INTO measurements SELECT date '2025-06-01' + g, g * 1.5 FROM generate_series(0, 399) g;
     CREATE MATERIALIZED VIEW monthly AS SELECT date_trunc('month', at) AS month, sum(value) AS total FROM measurements GROUP BY 1;
     CREATE SCHEMA "Sales";
     CREATE TABLE "Sales"."OrderLines" ("LineNo" int, qty int);
     INSERT INTO "Sales"."OrderLines" SELECT g, g % 7 FROM generate_series(1, 99) g;
     SELECT lo_from_bytea(0, convert_to('a large object', 'UTF8'));
     GRANT SELECT ON people, measurements TO app_group;
     GRANT USAGE ON SCHEMA "Sales" TO app_group;
     GRANT SELECT, INSERT ON "Sales"."OrderLines" TO app_group;`,
  );
  // What pg_dump treats specially: a large object with an owner and a grant, a publication, a subscription
  // created without connecting (so disabled), an event trigger, a serial advanced by use, a membership with
  // ADMIN OPTION.
  await psqlExec(
    source,
    "postgres",
    `CREATE ROLE lo_reader NOLOGIN;
     GRANT app_group TO lo_reader WITH ADMIN OPTION;`,
  );
  await psqlExec(
    source,
    "features",
    `SELECT lo_from_bytea(424242, convert_to('owned and granted', 'UTF8'));
     ALTER LARGE OBJECT 424242 OWNER TO app_login;
     GRANT SELECT ON LARGE OBJECT 424242 TO lo_reader;
     CREATE TABLE tickets (id serial PRIMARY KEY, title text);
     INSERT INTO tickets (title) SELECT 't' || g FROM generate_series(1, 31) g;
     CREATE PUBLICATION people_pub FOR TABLE people;
     CREATE SUBSCRIPTION people_sub CONNECTION 'host=127.0.0.1 port=1 dbname=nowhere' PUBLICATION people_pub
       WITH (connect = false, enabled = false, create_slot = false, slot_name = NONE);
     CREATE FUNCTION note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN RAISE NOTICE 'ddl: %', tg_tag; END $$;
     CREATE EVENT TRIGGER note_ddl ON ddl_command_end EXECUTE FUNCTION note_ddl();`,
  );
  // The database's own properties, which only pg_dump --create records.
  await psqlExec(
    source,
    "postgres",
    `ALTER DATABASE features CONNECTION LIMIT 40;
     ALTER DATABASE features SET work_mem = '7MB';
     ALTER DATABASE features SET search_path = "Sales", public;
     ALTER ROLE app_group IN DATABASE features SET statement_timeout = '45s';
     COMMENT ON DATABASE features IS 'features: grants, settings and a comment';
     REVOKE ALL ON DATABASE features FROM PUBLIC;
     GRANT CONNECT, TEMPORARY ON DATABASE features TO app_group;`,
  );
}

/** A database's own properties as the catalogs hold them, with role names rather than oids. */
export async function databaseProperties(c: LocalCluster, db: string): Promise<unknown> {
  const [props] = await query<Record<string, unknown>>(
    c,
    "postgres",
    `SELECT d.datconnlimit, d.datallowconn, shobj_description(d.oid, 'pg_database') AS comment,
            (SELECT array_agg(format('%s:%s:%s', CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END, a.privilege_type, a.is_grantable) ORDER BY 1)
               FROM aclexplode(d.datacl) a) AS acl,
            (SELECT array_agg(format('%s:%s', coalesce(pg_get_userbyid(NULLIF(s.setrole, 0)), '*'), array_to_string(s.setconfig, ',')) ORDER BY 1)
               FROM pg_db_role_setting s WHERE s.setdatabase = d.oid) AS settings
       FROM pg_database d WHERE d.datname = $1`,
    [db],
  );
  return props;
}
