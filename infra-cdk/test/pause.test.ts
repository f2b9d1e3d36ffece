// The paused state (Paused=true, docs/deploy.md "Between workshops: pause and resume"):
// what goes (NAT gateway, its address and routes, the database proxy, the holder's tasks),
// what stays unchanged (database, table, bucket, log groups, secrets: no data lost), the
// schedule that keeps the database stopped, and that the template names nothing that a
// paused deployment lacks.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { HOLDER_TASKS, KEEP_DB_STOPPED_RATE, PAUSED_DB_HOST } from '../lib/lablink-stack';
import { loadManifest } from '../lib/manifest';
import { allStatements, deployedWith, envOf, Json, ofType, refId, Synth, synth } from './template';

const s = synth();
const manifest = loadManifest();
const running = deployedWith(s);
const paused = deployedWith(s, { Paused: 'true' });
const allFunctions = [...manifest.http, ...manifest.events];
const idsOf = (t: Synth, type: string): string[] => ofType(t, type).map(([id]) => id);
const [dbId] = idsOf(s, 'AWS::RDS::DBInstance');

/** Every resource a deployed template names (Ref, Fn::GetAtt, DependsOn) that it lacks. */
function dangling(t: Synth): string[] {
  const have = new Set([...Object.keys(t.resources), ...Object.keys(t.json.Parameters ?? {})]);
  const missing = new Set<string>();
  const walk = (v: Json): void => {
    if (Array.isArray(v)) return v.forEach(walk);
    if (v === null || typeof v !== 'object') return;
    if (typeof v.Ref === 'string' && !v.Ref.startsWith('AWS::') && !have.has(v.Ref)) missing.add(v.Ref);
    if (Array.isArray(v['Fn::GetAtt']) && !have.has(v['Fn::GetAtt'][0])) missing.add(v['Fn::GetAtt'][0]);
    Object.values(v).forEach(walk);
  };
  for (const r of Object.values(t.resources)) {
    walk(r.Properties);
    for (const d of [r.DependsOn ?? []].flat()) if (!have.has(d)) missing.add(d);
  }
  walk(t.json.Outputs);
  return [...missing].sort();
}

describe('pause', () => {
  test('Paused is a true/false parameter, false by default', () => {
    const p = s.json.Parameters.Paused;
    assert.deepEqual([p.Type, p.Default, p.AllowedValues], ['String', 'false', ['true', 'false']]);
  });

  test('neither state names a resource it does not have', () => {
    assert.deepEqual(dangling(running), []);
    assert.deepEqual(dangling(paused), []);
  });

  test('paused: no NAT gateway, no Elastic IP, no route to them; the internet gateway and the endpoints stay', () => {
    assert.ok(idsOf(running, 'AWS::EC2::NatGateway').length >= 1);
    assert.equal(idsOf(running, 'AWS::EC2::EIP').length, idsOf(running, 'AWS::EC2::NatGateway').length);
    const natRoutes = (t: Synth) => ofType(t, 'AWS::EC2::Route').filter(([, r]) => r.Properties.NatGatewayId);
    assert.equal(natRoutes(running).length, 2, 'each private subnet routes to the NAT');
    assert.deepEqual(idsOf(paused, 'AWS::EC2::NatGateway'), []);
    assert.deepEqual(idsOf(paused, 'AWS::EC2::EIP'), []);
    assert.deepEqual(natRoutes(paused), []);
    assert.equal(idsOf(paused, 'AWS::EC2::InternetGateway').length, 1, 'the VMs\' public subnets keep theirs');
    assert.equal(idsOf(paused, 'AWS::EC2::VPCEndpoint').length, 2, 'DynamoDB and S3 gateway endpoints');
  });

  test('paused: no proxy; database functions name a host that never resolves and may connect nowhere', () => {
    const proxies = (t: Synth) => [...idsOf(t, 'AWS::RDS::DBProxy'), ...idsOf(t, 'AWS::RDS::DBProxyTargetGroup')];
    assert.equal(proxies(running).length, 2);
    assert.deepEqual(proxies(paused), []);
    const [proxyId] = idsOf(running, 'AWS::RDS::DBProxy');
    const functionRoles = new Set(
      allFunctions.map((f) => refId(running.resources[functionId(f.function)].Properties.Role)),
    );
    const connects = (t: Synth) =>
      allStatements(t).filter((st) => st.Action.includes('rds-db:connect') && functionRoles.has(st.role));
    assert.equal(connects(running).length, allFunctions.filter((f) => f.db).length);
    assert.deepEqual(connects(paused), [], 'no function may connect while paused');
    for (const f of allFunctions.filter((x) => x.db)) {
      assert.equal(refId(envOf(running, f.function).PGHOST), proxyId, f.function);
      assert.equal(envOf(paused, f.function).PGHOST, PAUSED_DB_HOST, f.function);
    }
  });

  test('every function is told whether the deployment is paused', () => {
    for (const f of allFunctions) {
      assert.deepEqual(envOf(s, f.function).LABLINK_PAUSED, { Ref: 'Paused' }, f.function);
    }
  });

  test('paused: no holder task; the fleet-end check is off', () => {
    const [serviceId] = idsOf(s, 'AWS::ECS::Service');
    assert.deepEqual(s.resources[serviceId!].Properties.DesiredCount, { 'Fn::If': ['IsPaused', 0, HOLDER_TASKS] });
    assert.equal(paused.resources[serviceId!].Properties.DesiredCount, 0);
    assert.equal(running.resources[serviceId!].Properties.DesiredCount, HOLDER_TASKS);
    // Resuming: the tasks start only after the NAT routes exist (their image pull and the
    // master secret need them); paused, the tag names no route.
    const egress = (t: Synth) =>
      (t.resources[serviceId!].Properties.Tags as Json[]).find((tag) => tag.Key === 'lablink:egress')?.Value;
    const routeIds = ofType(running, 'AWS::EC2::Route')
      .filter(([, r]) => r.Properties.NatGatewayId)
      .map(([id]) => id)
      .sort();
    const named = JSON.stringify(egress(running));
    assert.deepEqual(routeIds.filter((id) => named.includes(`{"Ref":"${id}"}`)), routeIds, named);
    assert.equal(egress(paused), 'paused');
    const [ruleId] = idsOf(s, 'AWS::Events::Rule');
    assert.equal(paused.resources[ruleId!].Properties.State, 'DISABLED');
    assert.equal(running.resources[ruleId!].Properties.State, 'ENABLED');
  });

  test('what holds data is the same in both states, and only the pause parts differ', () => {
    const kept = [
      'AWS::RDS::DBInstance',
      'AWS::DynamoDB::Table',
      'AWS::S3::Bucket',
      'AWS::Logs::LogGroup',
      'AWS::SecretsManager::Secret',
      'AWS::SQS::Queue',
    ];
    for (const type of kept) {
      const ids = idsOf(s, type);
      assert.ok(ids.length >= 1, type);
      for (const id of ids) assert.deepEqual(paused.resources[id], running.resources[id], `${type} ${id}`);
    }
    const gone = Object.keys(running.resources).filter((id) => !paused.resources[id]);
    const typesGone = new Set(gone.map((id) => running.resources[id].Type));
    assert.deepEqual(
      [...typesGone].sort(),
      ['AWS::EC2::EIP', 'AWS::EC2::NatGateway', 'AWS::EC2::Route', 'AWS::IAM::Policy', 'AWS::RDS::DBProxy', 'AWS::RDS::DBProxyTargetGroup'],
    );
    for (const id of gone.filter((x) => running.resources[x].Type === 'AWS::IAM::Policy')) {
      const actions = running.resources[id].Properties.PolicyDocument.Statement.flatMap((st: Json) => [st.Action].flat());
      assert.deepEqual(actions, ['rds-db:connect'], `${id}: only the proxy connect policies go`);
    }
    const added = Object.keys(paused.resources).filter((id) => !running.resources[id]);
    assert.deepEqual(added.map((id) => paused.resources[id].Type).sort(), ['AWS::IAM::Role', 'AWS::Scheduler::Schedule']);
  });

  test('paused: a schedule stops the database again, with a role that may do exactly that', () => {
    assert.deepEqual(idsOf(running, 'AWS::Scheduler::Schedule'), []);
    const [[, schedule]] = ofType(paused, 'AWS::Scheduler::Schedule') as [[string, Json]];
    const p = schedule.Properties;
    assert.equal(p.ScheduleExpression, KEEP_DB_STOPPED_RATE);
    // Named after the deployment: scripts/lablink_pause.py disables it before a resume starts the database.
    assert.deepEqual(p.Name, { 'Fn::Join': ['', ['lablink-', { Ref: 'Environment' }, '-keep-database-stopped']] });
    assert.equal(p.State, 'ENABLED');
    assert.deepEqual(p.Target.Arn, { 'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':scheduler:::aws-sdk:rds:stopDBInstance']] });
    // The universal target's input is the API's request: {"DbInstanceIdentifier": <the instance>}.
    const input = JSON.stringify(p.Target.Input);
    assert.ok(input.includes('DbInstanceIdentifier') && input.includes(`{"Ref":"${dbId}"}`), input);
    const roleId = refId(p.Target.RoleArn)!;
    const role = paused.resources[roleId].Properties;
    assert.deepEqual(
      role.AssumeRolePolicyDocument.Statement.map((st: Json) => st.Principal.Service),
      ['scheduler.amazonaws.com'],
    );
    const statements = allStatements(paused).filter((st) => st.role === roleId);
    assert.equal(statements.length, 1);
    assert.deepEqual(statements[0]!.Action, ['rds:StopDBInstance']);
    assert.equal(statements[0]!.Resource.length, 1);
    assert.ok(JSON.stringify(statements[0]!.Resource[0]).includes(`"${dbId}"`), 'this deployment\'s instance only');
    assert.equal(statements[0]!.Condition, undefined);
    assert.equal(running.resources[roleId], undefined, 'the role exists only while paused');
  });

  test('paused: the holder alarm does not fire on zero tasks, and the 5xx alarm notifies no one', () => {
    const alarm = (t: Synth, name: string): Json =>
      ofType(t, 'AWS::CloudWatch::Alarm').find(([, r]) => JSON.stringify(r.Properties.AlarmName).includes(`-${name}"`))![1]
        .Properties;
    const holderPaused = alarm(paused, 'HolderUnhealthy');
    // LessThan 0 never holds for a count, and no data is not a breach.
    assert.deepEqual([holderPaused.ComparisonOperator, holderPaused.Threshold], ['LessThanThreshold', 0]);
    assert.equal(holderPaused.TreatMissingData, 'notBreaching');
    assert.equal(alarm(running, 'HolderUnhealthy').Threshold, HOLDER_TASKS);
    assert.equal(alarm(paused, 'Api5xxRate').ActionsEnabled, false);
    assert.equal(alarm(running, 'Api5xxRate').ActionsEnabled, true);
    assert.equal(alarm(paused, 'JobsFailed').ActionsEnabled ?? true, true, 'the other alarms stay armed');
  });
});

function functionId(name: string): string {
  const found = ofType(s, 'AWS::Lambda::Function').filter(([, r]) =>
    (r.Properties.Tags ?? []).some((t: Json) => t.Key === 'lablink:function' && t.Value === name),
  );
  assert.equal(found.length, 1, name);
  return found[0]![0];
}
