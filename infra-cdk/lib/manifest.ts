// The function list of the suite, read from `functions/manifest.json` (the single source of
// truth the Rust side checks its route table against). This module owns parsing and
// checking that file; it knows nothing of CDK. The stack builds one Lambda per entry and
// derives each function's permissions from the entry's flags, so a route added to the
// manifest is deployed without touching the infrastructure code.

import * as fs from 'node:fs';
import * as path from 'node:path';

export type Access = 'participant' | 'vm' | 'admin' | 'public';
/**
 * The database user a function logs in as (an IAM token through the RDS Proxy); the
 * setup step (`lablink-holder setup-db`, shared/db/src/roles.rs) creates both and grants
 * what each may do. `lablink_public` may only what the participant and public routes'
 * statements need; `lablink_app` reads and writes every table.
 */
export type DbUser = 'lablink_app' | 'lablink_public';
export const DB_USERS: readonly DbUser[] = ['lablink_app', 'lablink_public'];
/** Who calls these without an admin session or a VM credential: anyone on the internet. */
const OPEN_ACCESS: ReadonlySet<string> = new Set(['participant', 'public']);
export type HttpMethod = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
/**
 * Access to the data-export bucket: `read` (GetObject, to presign downloads) or
 * `readwrite` (also PutObject and multipart). `none` when the manifest entry has no
 * `export_bucket`; the manifest itself accepts only `read` and `readwrite`.
 */
export type ExportBucketAccess = 'none' | 'read' | 'readwrite';

export interface HttpFunction {
  readonly function: string;
  readonly method: HttpMethod;
  /** API Gateway path, e.g. `/api/vm-status/{hostname}`. */
  readonly path: string;
  readonly access: Access;
  /** Connects to Postgres (through the RDS Proxy). */
  readonly db: boolean;
  /** The manifest's `db_user`: whom it logs in as (`null` without `db`). */
  readonly dbUser: DbUser | null;
  /** Reads or writes the DynamoDB jobs table. */
  readonly jobsTable: boolean;
  /**
   * Reads the admin secret (session key, password hash). Optional `admin_secret` in the
   * manifest; by default every admin route and the few others that check an admin
   * session (see `ADMIN_SESSION_READERS`).
   */
  readonly adminSecret: boolean;
  /** Optional `export_bucket` in the manifest. */
  readonly exportBucket: ExportBucketAccess;
}

export type EventTrigger = 'cloudwatch-logs-subscription' | 'dynamodb-stream';

export interface EventFunction {
  readonly function: string;
  readonly trigger: EventTrigger;
  readonly db: boolean;
  /** The manifest's `db_user`: whom it logs in as (`null` without `db`). */
  readonly dbUser: DbUser | null;
  readonly jobsTable: boolean;
  /** Runs and terminates the fleet's EC2 instances. */
  readonly ec2: boolean;
  /** Optional `export_bucket` in the manifest. */
  readonly exportBucket: ExportBucketAccess;
}

export interface Manifest {
  readonly http: HttpFunction[];
  readonly events: EventFunction[];
}

/**
 * Routes that are not `admin` access but still read the admin secret: the login page and
 * form (password hash, session key) and the two VM routes an admin session may also read.
 * A manifest entry's `admin_secret` flag overrides this list.
 */
export const ADMIN_SESSION_READERS: ReadonlySet<string> = new Set([
  'admin-login-page',
  'admin-login',
  'get-vm-status',
  'get-vm-logs',
]);

/**
 * The holder's long-polls, each a `POST` on the API that goes to the holder (ECS), not to a
 * Lambda: the client daemon calls `<holder_url>/vm_startup` and `<holder_url>/vm_export`,
 * holder_url defaulting to the API URL. The manifest may not claim them. /vm_startup
 * stays first: the stack's shared holder integration is named after the first route.
 */
export const HOLDER_ROUTE_PATHS: readonly string[] = ['/vm_startup', '/vm_export'];

const ACCESS: ReadonlySet<string> = new Set(['participant', 'vm', 'admin', 'public']);
const METHODS: ReadonlySet<string> = new Set(['GET', 'POST', 'PUT', 'PATCH', 'DELETE']);
const TRIGGERS: ReadonlySet<string> = new Set(['cloudwatch-logs-subscription', 'dynamodb-stream']);
const EXPORT_BUCKET: ReadonlySet<string> = new Set(['read', 'readwrite']);
// A crate directory, a cargo-lambda binary name and part of a CloudFormation logical id.
const FUNCTION_NAME = /^[a-z][a-z0-9-]{0,47}$/;
// API Gateway HTTP API paths: literal segments and `{param}` segments.
const ROUTE_PATH = /^\/$|^(\/([A-Za-z0-9._~-]+|\{[A-Za-z0-9_]+\}))+$/;

/** `functions/manifest.json` of this repository. */
export function defaultManifestPath(): string {
  return path.join(infraRoot(), '..', 'functions', 'manifest.json');
}

/** The `infra-cdk` directory, whether running from `dist/` (compiled) or the sources. */
export function infraRoot(): string {
  let dir = __dirname;
  while (!fs.existsSync(path.join(dir, 'cdk.json'))) {
    const parent = path.dirname(dir);
    if (parent === dir) throw new Error(`no cdk.json above ${__dirname}`);
    dir = parent;
  }
  return dir;
}

export function loadManifest(file: string = defaultManifestPath()): Manifest {
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`cannot read the function manifest ${file}: ${(e as Error).message}`);
  }
  return parseManifest(raw, file);
}

/** Checks every entry and reports all problems at once. */
export function parseManifest(raw: unknown, source = 'manifest'): Manifest {
  const problems: string[] = [];
  const obj = (raw ?? {}) as Record<string, unknown>;
  const httpRaw = Array.isArray(obj.http) ? obj.http : (problems.push('`http` must be a list'), []);
  const eventsRaw = Array.isArray(obj.events) ? obj.events : (problems.push('`events` must be a list'), []);
  const names = new Set<string>();
  const routes = new Set<string>();

  const name = (e: Record<string, unknown>, where: string): string => {
    const n = e.function;
    if (typeof n !== 'string' || !FUNCTION_NAME.test(n)) {
      problems.push(`${where}: function must match ${FUNCTION_NAME} (got ${JSON.stringify(n)})`);
      return String(n);
    }
    if (names.has(n)) problems.push(`${where}: function ${n} appears twice`);
    names.add(n);
    return n;
  };
  const flag = (e: Record<string, unknown>, key: string, where: string, dflt?: boolean): boolean => {
    const v = e[key];
    if (v === undefined && dflt !== undefined) return dflt;
    if (typeof v !== 'boolean') problems.push(`${where}: ${key} must be true or false`);
    return v === true;
  };
  // Absent: no access. Present: exactly "read" or "readwrite" (not "none", not a boolean).
  const exportBucket = (e: Record<string, unknown>, where: string): ExportBucketAccess => {
    const v = e.export_bucket;
    if (v === undefined) return 'none';
    if (typeof v !== 'string' || !EXPORT_BUCKET.has(v)) {
      problems.push(`${where}: export_bucket must be "read" or "readwrite", or absent for no access (got ${JSON.stringify(v)})`);
      return 'none';
    }
    return v as ExportBucketAccess;
  };
  // Present exactly when `db` is; a route anyone may call logs in as lablink_public only.
  const dbUser = (e: Record<string, unknown>, db: boolean, where: string, access?: string): DbUser | null => {
    const v = e.db_user;
    if (!db) {
      if (v !== undefined) problems.push(`${where}: db_user without db`);
      return null;
    }
    if (typeof v !== 'string' || !(DB_USERS as readonly string[]).includes(v)) {
      problems.push(`${where}: db_user must be one of ${DB_USERS.join(', ')} (got ${JSON.stringify(v)})`);
      return null;
    }
    if (access !== undefined && OPEN_ACCESS.has(access) && v !== 'lablink_public') {
      problems.push(`${where}: access ${access} is open to anyone, so db_user must be lablink_public (got ${v})`);
    }
    return v as DbUser;
  };

  const http = httpRaw.map((entry, i): HttpFunction => {
    const e = (entry ?? {}) as Record<string, unknown>;
    const where = `http[${i}]`;
    const fn = name(e, where);
    const method = String(e.method);
    const routePath = String(e.path);
    const access = String(e.access);
    if (!METHODS.has(method)) problems.push(`${where} (${fn}): method ${method} is not one of ${[...METHODS]}`);
    if (!ROUTE_PATH.test(routePath)) problems.push(`${where} (${fn}): path ${routePath} is not an API Gateway path`);
    if (!ACCESS.has(access)) problems.push(`${where} (${fn}): access ${access} is not one of ${[...ACCESS]}`);
    const key = `${method} ${routePath}`;
    if (routes.has(key)) problems.push(`${where} (${fn}): route ${key} appears twice`);
    routes.add(key);
    const db = flag(e, 'db', where);
    return {
      function: fn,
      method: method as HttpMethod,
      path: routePath,
      access: access as Access,
      db,
      dbUser: dbUser(e, db, `${where} (${fn})`, access),
      jobsTable: flag(e, 'jobs_table', where),
      adminSecret: flag(e, 'admin_secret', where, access === 'admin' || ADMIN_SESSION_READERS.has(fn)),
      exportBucket: exportBucket(e, `${where} (${fn})`),
    };
  });

  const events = eventsRaw.map((entry, i): EventFunction => {
    const e = (entry ?? {}) as Record<string, unknown>;
    const where = `events[${i}]`;
    const fn = name(e, where);
    const trigger = String(e.trigger);
    if (!TRIGGERS.has(trigger)) problems.push(`${where} (${fn}): trigger ${trigger} is not one of ${[...TRIGGERS]}`);
    const db = flag(e, 'db', where);
    return {
      function: fn,
      trigger: trigger as EventTrigger,
      db,
      dbUser: dbUser(e, db, `${where} (${fn})`),
      jobsTable: flag(e, 'jobs_table', where),
      ec2: flag(e, 'ec2', where, false),
      exportBucket: exportBucket(e, `${where} (${fn})`),
    };
  });

  for (const t of TRIGGERS) {
    const n = events.filter((e) => e.trigger === t).length;
    if (n !== 1) problems.push(`exactly one function must have trigger ${t} (found ${n})`);
  }
  for (const holderPath of HOLDER_ROUTE_PATHS) {
    const key = `POST ${holderPath}`;
    if (routes.has(key)) problems.push(`${key} is the holder's route (ECS), not a Lambda: remove it from the manifest`);
  }
  if (problems.length > 0) {
    throw new Error(`${source} is not a valid function manifest:\n  - ${problems.join('\n  - ')}`);
  }
  return { http, events };
}

/** `request-vm` → `RequestVm`, for construct ids. */
export function pascal(fn: string): string {
  return fn
    .split('-')
    .map((w) => w.charAt(0).toUpperCase() + w.slice(1))
    .join('');
}
