// A target user that is not a superuser can only create a database owned by a role, and restore objects owned by
// it, when it is a member of that role. For the run it joins the migrated roles it may join (CREATEROLE allows
// that for roles that are not superusers) and leaves them again afterwards, like the fast-restore settings: the
// intent is recorded before the first GRANT, so a crash is mended by the next run.
import type pg from "pg";
import { errorMessage } from "../shared/errors.js";
import { ident } from "../shared/pg/quote.js";
import { plural, type Output } from "./output.js";
import type { RunRecord, RunState } from "./state.js";

/**
 * PostgreSQL 16 split membership into ADMIN, INHERIT and SET, and gives a CREATEROLE user an ADMIN-only
 * membership in each role it creates: there, giving an object to a role needs SET, and reading its tables INHERIT.
 */
const splitMembership = (versionNum: number) => versionNum >= 160000;

/** Source roles the target user must join: on the target, not superusers, not predefined, not joined yet. */
export async function rolesToJoin(
  target: pg.Client,
  sourceRoles: string[],
  versionNum: number,
): Promise<{ join: string[]; superusers: string[] }> {
  const joined = splitMembership(versionNum)
    ? "pg_has_role(current_user, r.oid, 'SET') AND pg_has_role(current_user, r.oid, 'USAGE')"
    : "pg_has_role(current_user, r.oid, 'MEMBER')";
  const { rows } = await target.query<{ rolname: string; rolsuper: boolean }>(
    `SELECT r.rolname, r.rolsuper FROM pg_roles r
      WHERE r.rolname = ANY($1) AND r.rolname <> current_user AND r.rolname !~ '^pg_'
        AND NOT (${joined}) ORDER BY 1`,
    [sourceRoles],
  );
  return {
    join: rows.filter((r) => !r.rolsuper).map((r) => r.rolname),
    superusers: rows.filter((r) => r.rolsuper).map((r) => r.rolname),
  };
}

/** GRANT each role to the current user; returns the roles that could not be joined, with why. */
export async function joinRoles(
  target: pg.Client,
  roles: string[],
  versionNum: number,
): Promise<{ role: string; error: string }[]> {
  const failed: { role: string; error: string }[] = [];
  // On 16+ a grant of our own, beside the ADMIN one CREATEROLE gave us: the REVOKE at the end takes only ours.
  const options = splitMembership(versionNum) ? " WITH INHERIT TRUE, SET TRUE" : "";
  for (const role of roles) {
    await target
      .query(`GRANT ${ident(role)} TO CURRENT_USER${options}`)
      .catch((err: unknown) => failed.push({ role, error: errorMessage(err) }));
  }
  return failed;
}

/** REVOKE what joinRoles granted; a role dropped meanwhile is fine. Returns what could not be revoked. */
export async function leaveRoles(target: pg.Client, roles: string[]): Promise<string[]> {
  const failed: string[] = [];
  for (const role of roles) {
    await target.query(`REVOKE ${ident(role)} FROM CURRENT_USER`).catch((err: unknown) => {
      if (!/does not exist/.test(errorMessage(err))) failed.push(`${role}: ${errorMessage(err)}`);
    });
  }
  return failed;
}

/** Whether a run joined roles on its target and has not left them yet. */
export const rolesLeft = (r: RunRecord): boolean =>
  Boolean(r.memberships && !r.memberships.revoked && r.memberships.granted.length);

/** Leaves the roles a run joined (this run's at its end, an earlier run's when it died before). */
export async function leaveRunRoles(state: RunState, openTarget: () => Promise<pg.Client>, out: Output): Promise<void> {
  const m = state.record.memberships;
  if (!m || m.revoked || !m.granted.length) return;
  const client = await openTarget().catch(() => undefined);
  const failed = client
    ? await leaveRoles(client, m.granted).finally(() => client.end().catch(() => undefined))
    : ["cannot connect to the target"];
  if (failed.length) {
    out.warn(
      `could not leave the role(s) joined for the run (${failed.join("; ")}): the next run tries again, or REVOKE them by hand`,
    );
    return;
  }
  m.revoked = true;
  await state.save();
  out.line(`left the ${plural(m.granted.length, "role")} joined for run ${state.runId}`);
}
