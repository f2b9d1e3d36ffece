// Context switches, the manifest as the source of routes, and where function code and the client daemon come from.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { Template } from 'aws-cdk-lib/assertions';
import { buildApp } from '../lib/app';
import { EXPORT_BUCKET_ACTIONS } from '../lib/lablink-stack';
import { defaultManifestPath, HOLDER_ROUTE_PATHS, parseManifest } from '../lib/manifest';
import {
  actionsOf,
  envOf,
  functionsByName,
  mentions,
  ofType,
  routeTarget,
  statementsOfFunction,
  synth,
  tempDir,
} from './template';

const realManifest = JSON.parse(fs.readFileSync(defaultManifestPath(), 'utf8'));

/** A small manifest: two routes and the two event functions. */
function smallManifest(extra: object[] = []): object {
  return {
    http: [
      { function: 'index', method: 'GET', path: '/', access: 'participant', db: true, db_user: 'lablink_public', jobs_table: false },
      { function: 'admin-job', method: 'GET', path: '/admin/jobs/{id}', access: 'admin', db: false, jobs_table: true },
      ...extra,
    ],
    events: realManifest.events,
  };
}

function writeManifest(m: object): string {
  const file = path.join(tempDir('manifest'), 'manifest.json');
  fs.writeFileSync(file, JSON.stringify(m));
  return file;
}

describe('context switches', () => {
  test('arm64 is a context switch', () => {
    const s = synth({ 'lablink:architecture': 'arm64', 'lablink:manifest': writeManifest(smallManifest()) });
    for (const [id, r] of ofType(s, 'AWS::Lambda::Function')) {
      assert.deepEqual(r.Properties.Architectures, ['arm64'], id);
    }
  });

  test('bad context values are refused with the key named', () => {
    assert.throws(() => buildApp({ 'lablink:architecture': 'sparc' }), /lablink:architecture/);
    assert.throws(() => buildApp({ 'lablink:lambdaCode': 'maybe' }), /lablink:lambdaCode/);
    assert.throws(
      () => buildApp({ 'lablink:lambdaCode': 'stand-in', 'lablink:participantConcurrency': 0 }),
      /lablink:participantConcurrency/,
    );
  });
});

describe('the manifest drives the routes', () => {
  test('a route added to the manifest is deployed with its own function and permissions', () => {
    const added = {
      function: 'export-data',
      method: 'POST',
      path: '/api/exports',
      access: 'admin',
      db: true,
      db_user: 'lablink_app',
      jobs_table: true,
    };
    const base = synth({ 'lablink:manifest': writeManifest(smallManifest()) });
    const more = synth({ 'lablink:manifest': writeManifest(smallManifest([added])) });
    assert.equal(functionsByName(more).size, functionsByName(base).size + 1);
    const { functionId } = routeTarget(more, 'POST /api/exports');
    assert.equal(functionId, functionsByName(more).get('export-data'));
    const env = more.resources[functionId!].Properties.Environment.Variables;
    assert.ok(env.LABLINK_JOBS_TABLE && env.LABLINK_ADMIN_SECRET_ID && env.PGHOST);
    assert.equal(env.PGUSER, 'lablink_app');
  });

  test('an admin_secret flag in the manifest overrides the default', () => {
    const m = parseManifest(
      smallManifest([
        { function: 'x', method: 'GET', path: '/x', access: 'public', db: false, jobs_table: false, admin_secret: true },
      ]),
    );
    assert.equal(m.http.find((r) => r.function === 'x')!.adminSecret, true);
    assert.equal(m.http.find((r) => r.function === 'index')!.adminSecret, false);
    assert.equal(m.http.find((r) => r.function === 'admin-job')!.adminSecret, true);
  });

  test('export_bucket: absent is no access; read and readwrite are taken as they are', () => {
    const events = realManifest.events.map((e: object) => ({ ...e, export_bucket: undefined }));
    const m = parseManifest({
      ...(smallManifest([
        { function: 'r', method: 'GET', path: '/r', access: 'admin', db: false, jobs_table: false, export_bucket: 'read' },
        { function: 'rw', method: 'GET', path: '/rw', access: 'admin', db: false, jobs_table: false, export_bucket: 'readwrite' },
      ]) as object),
      events: [...events.slice(0, 1), { ...events[1], export_bucket: 'readwrite' }],
    });
    const access = (n: string) => [...m.http, ...m.events].find((f) => f.function === n)!.exportBucket;
    assert.equal(access('index'), 'none');
    assert.equal(access('r'), 'read');
    assert.equal(access('rw'), 'readwrite');
    assert.equal(access(m.events[0]!.function), 'none');
    assert.equal(access(m.events[1]!.function), 'readwrite');
  });

  test('any other export_bucket value is refused, naming the function and the value', () => {
    for (const bad of ['write', 'none', 'READ', '', true, null, ['read']]) {
      const m = smallManifest([
        { function: 'x', method: 'GET', path: '/x', access: 'admin', db: false, jobs_table: false, export_bucket: bad },
      ]);
      assert.throws(
        () => parseManifest(m),
        (e: Error) =>
          e.message.includes('(x): export_bucket must be "read" or "readwrite", or absent for no access') &&
          e.message.includes(`(got ${JSON.stringify(bad)})`),
        `export_bucket ${JSON.stringify(bad)}`,
      );
    }
    const events = [realManifest.events[0], { ...realManifest.events[1], export_bucket: 'rw' }];
    assert.throws(
      () => parseManifest({ http: (smallManifest() as { http: object[] }).http, events }),
      /events\[1\] \(provisioner\): export_bucket must be "read" or "readwrite"/,
    );
  });

  test('a route added with export_bucket gets exactly that access and the bucket name', () => {
    const added = {
      function: 'export-archive',
      method: 'GET',
      path: '/api/exports/{id}/archive',
      access: 'admin',
      db: false,
      jobs_table: false,
      export_bucket: 'readwrite',
    };
    const s = synth({ 'lablink:manifest': writeManifest(smallManifest([added])) });
    const st = statementsOfFunction(s, 'export-archive').filter((x) => x.Action.some((a) => a.startsWith('s3:')));
    assert.deepEqual([...actionsOf(st)].sort(), [...EXPORT_BUCKET_ACTIONS.readwrite].sort());
    const [bucketId] = ofType(s, 'AWS::S3::Bucket')[0]!;
    assert.deepEqual(envOf(s, 'export-archive').LABLINK_EXPORT_BUCKET, { Ref: bucketId });
    assert.equal(statementsOfFunction(s, 'index').filter((x) => mentions(x.Resource, bucketId)).length, 0);
  });

  test('a manifest may not claim a holder route, each refused on its own', () => {
    assert.deepEqual([...HOLDER_ROUTE_PATHS].sort(), ['/vm_export', '/vm_startup']);
    for (const holderPath of HOLDER_ROUTE_PATHS) {
      const claim = { function: 'holder-route', method: 'POST', path: holderPath, access: 'vm', db: true, db_user: 'lablink_app', jobs_table: false };
      assert.throws(
        () => parseManifest(smallManifest([claim])),
        (e: Error) => e.message.includes(`POST ${holderPath} is the holder's route`) && !e.message.includes('appears twice'),
      );
      // Another method on the same path is a different API route: allowed.
      assert.doesNotThrow(() => parseManifest(smallManifest([{ ...claim, method: 'GET' }])));
    }
  });

  test('a malformed manifest is refused with every problem listed', () => {
    const bad = {
      http: [
        { function: 'index', method: 'GET', path: '/', access: 'participant', db: true, db_user: 'lablink_public', jobs_table: false },
        { function: 'index', method: 'GET', path: '/', access: 'everyone', db: 'yes', jobs_table: false },
        { function: 'Bad_Name', method: 'FETCH', path: 'no-slash', access: 'vm', db: true, jobs_table: false },
        { function: 'holder', method: 'POST', path: '/vm_startup', access: 'vm', db: true, jobs_table: false },
        { function: 'holder-export', method: 'POST', path: '/vm_export', access: 'vm', db: true, jobs_table: false },
        { function: 'open-as-app', method: 'GET', path: '/open', access: 'participant', db: true, db_user: 'lablink_app', jobs_table: false },
        { function: 'master', method: 'GET', path: '/master', access: 'admin', db: true, db_user: 'lablink_admin', jobs_table: false },
        { function: 'no-db', method: 'GET', path: '/no-db', access: 'admin', db: false, db_user: 'lablink_app', jobs_table: false },
      ],
      events: [{ function: 'log-processor', trigger: 'cloudwatch-logs-subscription', db: true, jobs_table: false }],
    };
    assert.throws(
      () => parseManifest(bad),
      (e: Error) => {
        for (const want of [
          'appears twice',
          'access everyone',
          'db must be true or false',
          'function must match',
          'method FETCH',
          'path no-slash',
          'trigger dynamodb-stream',
          'POST /vm_startup',
          'POST /vm_export',
          '(Bad_Name): db_user must be one of lablink_app, lablink_public (got undefined)',
          '(open-as-app): access participant is open to anyone, so db_user must be lablink_public',
          '(master): db_user must be one of lablink_app, lablink_public (got "lablink_admin")',
          '(no-db): db_user without db',
        ]) {
          assert.ok(e.message.includes(want), `missing "${want}" in:\n${e.message}`);
        }
        return true;
      },
    );
  });
});

/** Writes `<dir>/lablink-client-daemon/bootstrap` (where scripts/build-client-daemon puts it); returns its SHA-256. */
function writeDaemon(dir: string, body = 'a daemon build'): string {
  fs.mkdirSync(path.join(dir, 'lablink-client-daemon'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'lablink-client-daemon', 'bootstrap'), body);
  return createHash('sha256').update(body).digest('hex');
}

/** The provisioner's LABLINK_DAEMON_SHA256 in a built app. */
function daemonSha(built: ReturnType<typeof buildApp>): string {
  const provisioner = realManifest.events.find((e: { trigger: string }) => e.trigger === 'dynamodb-stream').function;
  const template = Template.fromStack(built.stack);
  const json = template.toJSON();
  return envOf({ built, template, json, resources: json.Resources }, provisioner).LABLINK_DAEMON_SHA256;
}

describe('function code', () => {
  test('release mode names every missing cargo-lambda artifact and the missing daemon', () => {
    const dir = tempDir('no-artifacts');
    assert.throws(
      () => buildApp({ 'lablink:lambdaCode': 'release', 'lablink:lambdaDir': dir, 'lablink:manifest': writeManifest(smallManifest()) }),
      (e: Error) =>
        /index/.test(e.message) &&
        /provisioner/.test(e.message) &&
        /scripts\/build-lambdas/.test(e.message) &&
        e.message.includes(path.join(dir, 'lablink-client-daemon', 'bootstrap')) &&
        /scripts\/build-client-daemon/.test(e.message),
    );
  });

  test('release mode deploys the cargo-lambda zips as they are', () => {
    const dir = tempDir('artifacts');
    const names = ['index', 'admin-job', ...realManifest.events.map((e: { function: string }) => e.function)];
    for (const n of names) {
      fs.mkdirSync(path.join(dir, n));
      fs.writeFileSync(path.join(dir, n, 'bootstrap.zip'), `zip of ${n}`);
    }
    const sha = writeDaemon(dir);
    const outdir = tempDir('release-out');
    const built = buildApp(
      { 'lablink:lambdaCode': 'release', 'lablink:lambdaDir': dir, 'lablink:manifest': writeManifest(smallManifest()) },
      outdir,
    );
    Template.fromStack(built.stack);
    const assembly = built.app.synth();
    const assets = JSON.parse(fs.readFileSync(path.join(assembly.directory, 'LabLink.assets.json'), 'utf8'));
    const files = Object.values(assets.files) as { source: { path: string; packaging: string } }[];
    const lambdaZips = files.filter((f) => f.source.path.endsWith('.zip'));
    assert.equal(lambdaZips.length, names.length);
    for (const f of lambdaZips) assert.equal(f.source.packaging, 'file');
    assert.deepEqual(built.standIns, []);
    // The daemon: the build's bytes, uploaded as they are, and their SHA-256 to the provisioner.
    assert.equal(built.daemonStandIn, false);
    assert.equal(daemonSha(built), sha);
    const daemon = files.filter((f) => !f.source.path.endsWith('.zip') && !f.source.path.endsWith('.template.json'));
    assert.equal(daemon.length, 1);
    assert.equal(daemon[0]!.source.packaging, 'file');
    const staged = fs.readFileSync(path.join(assembly.directory, daemon[0]!.source.path), 'utf8');
    assert.equal(staged, 'a daemon build');
  });

  test('lablink:daemonPath names the daemon binary', () => {
    const dir = tempDir('artifacts-elsewhere');
    for (const n of ['index', 'admin-job', ...realManifest.events.map((e: { function: string }) => e.function)]) {
      fs.mkdirSync(path.join(dir, n));
      fs.writeFileSync(path.join(dir, n, 'bootstrap.zip'), `zip of ${n}`);
    }
    const elsewhere = tempDir('daemon');
    const sha = writeDaemon(elsewhere, 'the daemon from elsewhere');
    const context = {
      'lablink:lambdaCode': 'release',
      'lablink:lambdaDir': dir,
      'lablink:manifest': writeManifest(smallManifest()),
      'lablink:daemonPath': path.join(elsewhere, 'lablink-client-daemon', 'bootstrap'),
    };
    assert.equal(daemonSha(buildApp(context, tempDir('daemon-out'))), sha);
    const missing = { ...context, 'lablink:daemonPath': path.join(elsewhere, 'nothing-here') };
    assert.throws(() => buildApp(missing, tempDir('daemon-out')), /nothing-here.*scripts\/build-client-daemon/s);
  });

  test('auto mode falls back to stand-ins and says which', () => {
    const dir = tempDir('some-artifacts');
    fs.mkdirSync(path.join(dir, 'index'));
    fs.writeFileSync(path.join(dir, 'index', 'bootstrap.zip'), 'zip');
    const built = buildApp({ 'lablink:lambdaDir': dir, 'lablink:manifest': writeManifest(smallManifest()) }, tempDir('auto-out'));
    assert.deepEqual([...built.standIns].sort(), ['admin-job', 'log-processor', 'provisioner']);
    assert.equal(built.daemonStandIn, true);
    // With a daemon build there, auto mode ships it.
    const sha = writeDaemon(dir);
    const context = { 'lablink:lambdaDir': dir, 'lablink:manifest': writeManifest(smallManifest()) };
    const withDaemon = buildApp(context, tempDir('auto-out'));
    assert.equal(withDaemon.daemonStandIn, false);
    assert.equal(daemonSha(withDaemon), sha);
  });

  test('stand-in mode ships the stand-in daemon even where a build exists', () => {
    const dir = tempDir('stand-in-mode');
    const sha = writeDaemon(dir);
    const built = buildApp(
      { 'lablink:lambdaCode': 'stand-in', 'lablink:lambdaDir': dir, 'lablink:manifest': writeManifest(smallManifest()) },
      tempDir('stand-in-out'),
    );
    assert.notEqual(daemonSha(built), sha);
    assert.equal(built.daemonStandIn, false, 'asked for, so not reported');
  });
});
