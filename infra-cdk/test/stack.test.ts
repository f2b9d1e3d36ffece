// What the synthesized template must guarantee (issue 9). Expected counts come from
// functions/manifest.json, so a route added there is checked without editing this file.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import {
  DEFAULT_AMI_SSM_PARAMETER,
  EXPORT_BUCKET_ACTIONS,
  holderIdleTimeoutSeconds,
  JOBS_TABLE_ACTIONS,
  SESSION_MANAGER_POLICY,
  STARTUP_SCRIPT_B64_MAX,
  VM_NAME_TAGS,
} from '../lib/lablink-stack';
import { HOLDER_ROUTE_PATHS, infraRoot, loadManifest } from '../lib/manifest';
import {
  actionsOf,
  allStatements,
  deployedWith,
  envOf,
  fn,
  functionsByName,
  Json,
  mentions,
  ofType,
  refId,
  roleOfFunction,
  routeTarget,
  statementsOfFunction,
  synth,
  worstCaseLength,
} from './template';

const manifest = loadManifest();
const s = synth();
const the = (type: string): [string, Json] => {
  const found = ofType(s, type);
  assert.equal(found.length, 1, `exactly one ${type}`);
  return found[0]!;
};
const [tableId, table] = the('AWS::DynamoDB::Table');
const [dbId, db] = the('AWS::RDS::DBInstance');
const [proxyId, proxy] = the('AWS::RDS::DBProxy');
const [, task] = the('AWS::ECS::TaskDefinition');
const [serviceId, service] = the('AWS::ECS::Service');
const [, alb] = the('AWS::ElasticLoadBalancingV2::LoadBalancer');
const [listenerId, listener] = the('AWS::ElasticLoadBalancingV2::Listener');
const [targetGroupId, targetGroup] = the('AWS::ElasticLoadBalancingV2::TargetGroup');
const [bucketId, bucket] = the('AWS::S3::Bucket');
const adminSecrets = ofType(s, 'AWS::SecretsManager::Secret').filter(
  ([, r]) => r.Properties.GenerateSecretString?.GenerateStringKey === 'session_key',
);
assert.equal(adminSecrets.length, 1, 'one admin secret');
const [adminSecretId, adminSecret] = adminSecrets[0]!;
const vmLogGroups = ofType(s, 'AWS::Logs::LogGroup').filter(([, r]) =>
  JSON.stringify(r.Properties.LogGroupName ?? '').includes('lablink-cloud-init-'),
);
assert.equal(vmLogGroups.length, 1, 'one VM log group');
const [vmLogGroupId, vmLogGroup] = vmLogGroups[0]!;
const holder = task.Properties.ContainerDefinitions.find((c: Json) => c.Name === 'holder');
const holderEnv = Object.fromEntries(holder.Environment.map((e: Json) => [e.Name, e.Value]));
const provisionerName = manifest.events.find((e) => e.trigger === 'dynamodb-stream')!.function;
const logProcessorName = manifest.events.find((e) => e.trigger === 'cloudwatch-logs-subscription')!.function;
const allFunctions = [...manifest.http, ...manifest.events];
/** The holder's routes on the API: its long-polls, each a POST. */
const holderRoutes = HOLDER_ROUTE_PATHS.map((p) => `POST ${p}`);
/** Each parameter that sets up the VMs → the provisioner's variable it becomes. */
const VM_SETTINGS: Record<string, string> = {
  MachineType: 'LABLINK_INSTANCE_TYPE',
  AmiId: 'LABLINK_AMI_ID',
  AmiSsmParameter: 'LABLINK_AMI_SSM_PARAMETER',
  ClientImage: 'LABLINK_CLIENT_IMAGE',
  TutorialRepo: 'LABLINK_TUTORIAL_REPO',
  SubjectSoftware: 'LABLINK_SUBJECT_SOFTWARE',
  StartupScriptB64: 'LABLINK_STARTUP_SCRIPT_B64',
  StartupOnError: 'LABLINK_STARTUP_ON_ERROR',
  DesktopUser: 'LABLINK_DESKTOP_USER',
  VmDiskGb: 'LABLINK_VM_DISK_GB',
};
/** The client daemon's variables (describe('client daemon')). */
const daemonEnv = envOf(s, provisionerName);

describe('routes and functions', () => {
  test('every manifest route exists and invokes its own function', () => {
    const seen = new Set<string>();
    const byName = functionsByName(s);
    for (const r of manifest.http) {
      const { functionId } = routeTarget(s, `${r.method} ${r.path}`);
      assert.equal(functionId, byName.get(r.function), `${r.method} ${r.path} invokes ${r.function}`);
      assert.ok(!seen.has(functionId!), `${r.function} serves one route only`);
      seen.add(functionId!);
    }
  });

  test('the function count is the route count plus the log processor and the provisioner', () => {
    const names = [...functionsByName(s).keys()].sort();
    assert.equal(names.length, manifest.http.length + 2);
    assert.deepEqual(names, allFunctions.map((f) => f.function).sort());
  });

  test('the holder serves POST /vm_startup and POST /vm_export (the client daemon\'s long-polls)', () => {
    assert.deepEqual([...holderRoutes].sort(), ['POST /vm_export', 'POST /vm_startup']);
  });

  test('the API has exactly the manifest routes plus the holder\'s routes', () => {
    const keys = ofType(s, 'AWS::ApiGatewayV2::Route').map(([, r]) => r.Properties.RouteKey).sort();
    assert.deepEqual(keys, [...manifest.http.map((r) => `${r.method} ${r.path}`), ...holderRoutes].sort());
  });

  test('the holder\'s routes share one integration: the holder load balancer through a VPC link', () => {
    const [vpcLinkId] = the('AWS::ApiGatewayV2::VpcLink');
    const targets = holderRoutes.map((key) => routeTarget(s, key));
    const ids = new Set(targets.map((t) => t.integrationId));
    assert.equal(ids.size, 1, `one integration for ${holderRoutes.join(', ')}: ${[...ids].join(', ')}`);
    const { integration } = targets[0]!;
    assert.equal(integration.Properties.ConnectionType, 'VPC_LINK');
    assert.equal(integration.Properties.IntegrationType, 'HTTP_PROXY');
    assert.equal(integration.Properties.IntegrationMethod, 'ANY');
    assert.equal(refId(integration.Properties.IntegrationUri), listenerId);
    assert.equal(refId(integration.Properties.ConnectionId), vpcLinkId);
    assert.equal(integration.Properties.TimeoutInMillis, 29000);
    // No other route reaches the holder, and the holder has no other integration.
    const vpcLinked = ofType(s, 'AWS::ApiGatewayV2::Integration').filter(([, r]) => r.Properties.ConnectionType === 'VPC_LINK');
    assert.deepEqual(vpcLinked.map(([id]) => id), [...ids]);
  });

  test('functions are provided.al2023 bootstrap binaries on x86_64 by default', () => {
    for (const [id, r] of ofType(s, 'AWS::Lambda::Function')) {
      assert.equal(r.Properties.Runtime, 'provided.al2023', id);
      assert.equal(r.Properties.Handler, 'bootstrap', id);
      assert.deepEqual(r.Properties.Architectures, ['x86_64'], id);
    }
  });

  test('participant routes have reserved concurrency; the others do not', () => {
    for (const r of manifest.http) {
      const reserved = fn(s, r.function).Properties.ReservedConcurrentExecutions;
      if (r.access === 'participant') assert.ok(reserved > 0 && reserved <= 100, `${r.function}: ${reserved}`);
      else assert.equal(reserved, undefined, r.function);
    }
  });

  test('the API stage is throttled and logs its requests', () => {
    const [, stage] = the('AWS::ApiGatewayV2::Stage');
    assert.equal(stage.Properties.StageName, '$default');
    assert.ok(stage.Properties.DefaultRouteSettings.ThrottlingBurstLimit > 0);
    assert.ok(stage.Properties.AccessLogSettings.DestinationArn);
  });
});

describe('database access', () => {
  test('only database functions get rds-db:connect, through the proxy, as exactly their manifest user', () => {
    for (const f of allFunctions) {
      const connect = statementsOfFunction(s, f.function).filter((st) => st.Action.includes('rds-db:connect'));
      if (!f.db) {
        assert.equal(connect.length, 0, `${f.function} must not connect`);
        continue;
      }
      assert.equal(connect.length, 1, `${f.function} connects`);
      const resources = [connect[0]!.Resource].flat();
      assert.equal(resources.length, 1, `${f.function}: one user`);
      const arn = JSON.stringify(resources[0]);
      assert.ok(arn.includes(proxyId), `${f.function}: ${arn}`);
      assert.ok(arn.endsWith(`/${f.dbUser}"]]}`), `${f.function} connects as ${f.dbUser}: ${arn}`);
    }
    const holderRole = refId(task.Properties.TaskRoleArn)!;
    const roles = new Set(allStatements(s).filter((st) => st.Action.includes('rds-db:connect')).map((st) => st.role));
    const expected = new Set(allFunctions.filter((f) => f.db).map((f) => roleOfFunction(s, f.function)));
    expected.add(holderRole);
    expected.add(refId(proxy.Properties.RoleArn)!);
    assert.deepEqual(roles, expected, 'nobody else may connect');
  });

  test('database functions get the connection settings and run in the VPC; the others neither', () => {
    const running = deployedWith(s);
    for (const f of allFunctions) {
      const env = envOf(running, f.function);
      const vpc = fn(s, f.function).Properties.VpcConfig;
      if (f.db) {
        assert.equal(refId(env.PGHOST), proxyId, `${f.function} uses the proxy`);
        assert.equal(env.PGUSER, f.dbUser, f.function);
        assert.equal(env.PGDATABASE, 'lablink');
        assert.equal(env.PGPORT, '5432');
        assert.equal(env.PGSSLMODE, 'require');
        assert.equal(env.LABLINK_DB_IAM_AUTH, '1');
        assert.ok(vpc?.SubnetIds?.length === 2, `${f.function} in two private subnets`);
      } else {
        assert.equal(env.PGHOST, undefined, f.function);
        assert.equal(vpc, undefined, f.function);
      }
    }
  });

  test('every route anyone may call logs in as lablink_public; the VM and admin routes and the event functions as lablink_app', () => {
    for (const f of allFunctions) {
      if (!f.db) continue;
      const open = 'access' in f && (f.access === 'participant' || f.access === 'public');
      assert.equal(envOf(s, f.function).PGUSER, open ? 'lablink_public' : 'lablink_app', f.function);
    }
    // The participant routes that reach Postgres, by name (the manifest cannot drift).
    for (const name of ['index', 'request-vm', 'unassigned-vms-count', 'seat-page', 'seat-status', 'seat-code', 'health', 'admin-login']) {
      assert.equal(envOf(s, name).PGUSER, 'lablink_public', name);
    }
  });

  test('the proxy may log in as exactly the users the functions use, and the holder as lablink_app', () => {
    const proxyConnect = allStatements(s).filter(
      (st) => st.role === refId(proxy.Properties.RoleArn) && st.Action.includes('rds-db:connect'),
    );
    const users = proxyConnect
      .flatMap((st) => [st.Resource].flat())
      .map((r) => JSON.stringify(r).match(/dbuser:.*\/(lablink_\w+)/)?.[1])
      .sort();
    assert.deepEqual(users, ['lablink_app', 'lablink_public']);
    const holderConnect = allStatements(s).filter(
      (st) => st.role === refId(task.Properties.TaskRoleArn) && st.Action.includes('rds-db:connect'),
    );
    assert.equal(holderConnect.length, 1);
    const holderUsers = [holderConnect[0]!.Resource].flat().map((r) => JSON.stringify(r));
    assert.equal(holderUsers.length, 1);
    assert.ok(holderUsers[0]!.endsWith('/lablink_app"]]}'), holderUsers[0]);
  });

  test('PostgreSQL 15 with IAM auth, encryption, backups, TLS and deletion protection from a parameter', () => {
    const p = db.Properties;
    assert.equal(p.Engine, 'postgres');
    assert.match(p.EngineVersion, /^15(\.|$)/);
    assert.equal(p.EnableIAMDatabaseAuthentication, true);
    assert.equal(p.StorageEncrypted, true);
    assert.ok(p.BackupRetentionPeriod >= 7);
    assert.deepEqual(p.DeletionProtection, { Ref: 'DatabaseDeletionProtection' });
    assert.notEqual(p.PubliclyAccessible, true);
    const params = s.resources[refId(p.DBParameterGroupName)!].Properties.Parameters;
    assert.equal(params['rds.force_ssl'], '1');
  });

  test('account-wide names carry the environment, so deployments can share an account', () => {
    const withEnv = { 'Fn::Join': ['', ['lablink-', { Ref: 'Environment' }]] };
    assert.deepEqual(proxy.Properties.DBProxyName, withEnv);
    for (const [id, r] of Object.entries(s.resources)) {
      for (const [k, v] of Object.entries((r as Json).Properties ?? {})) {
        if (/^(DBProxyName|LogGroupName|FunctionName|TableName|RoleName|QueueName|ClusterName|DBInstanceIdentifier|BucketName|AlarmName|DashboardName|BudgetName)$/.test(k)) {
          assert.ok(typeof v !== 'string', `${id}.${k} is a fixed name: ${v}`);
        }
      }
    }
  });

  test('the proxy requires TLS and IAM end to end; the holder bypasses it', () => {
    assert.equal(proxy.Properties.RequireTLS, true);
    assert.equal(proxy.Properties.DefaultAuthScheme, 'IAM_AUTH');
    assert.equal(proxy.Properties.EngineFamily, 'POSTGRESQL');
    assert.deepEqual(holderEnv.PGHOST, { 'Fn::GetAtt': [dbId, 'Endpoint.Address'] });
    assert.equal(holderEnv.LABLINK_DB_IAM_AUTH, '1');
    assert.equal(holderEnv.PGUSER, 'lablink_app');
    assert.equal(holderEnv.PGSSLMODE, 'require');
  });
});

describe('IAM', () => {
  const ec2Fleet = ['ec2:RunInstances', 'ec2:TerminateInstances', 'ec2:CreateTags'];

  test('only the provisioner may run, tag or terminate instances', () => {
    const provisionerRole = roleOfFunction(s, provisionerName);
    for (const st of allStatements(s)) {
      if (st.Action.some((a) => ec2Fleet.includes(a))) {
        assert.equal(st.role, provisionerRole, `${st.Sid ?? st.Action} belongs to the provisioner only`);
      }
    }
    assert.ok(actionsOf(statementsOfFunction(s, provisionerName)).has('ec2:RunInstances'));
  });

  test('running and terminating instances is fenced by the deployment tag', () => {
    const st = statementsOfFunction(s, provisionerName);
    const tagged = (kind: string) => ({ StringEquals: { [`aws:${kind}/lablink:deployment`]: { Ref: 'Environment' } } });
    const run = st.filter((x) => x.Action.includes('ec2:RunInstances'));
    const onInstances = run.filter((x) => JSON.stringify(x.Resource).includes('instance/*'));
    assert.equal(onInstances.length, 1);
    assert.deepEqual(onInstances[0]!.Condition.StringEquals['aws:RequestTag/lablink:deployment'], { Ref: 'Environment' });
    assert.equal(onInstances[0]!.Condition.StringEquals['ec2:MetadataHttpTokens'], 'required', 'IMDSv2 only');
    const terminate = st.filter((x) => x.Action.includes('ec2:TerminateInstances'));
    assert.equal(terminate.length, 1);
    assert.deepEqual(terminate[0]!.Condition, tagged('ResourceTag'));
    const tags = st.filter((x) => x.Action.includes('ec2:CreateTags'));
    assert.equal(tags.length, 2);
    for (const t of tags) {
      const atLaunch = t.Condition?.StringEquals?.['ec2:CreateAction'] === 'RunInstances';
      const ownNamesOnly =
        mentions(t.Condition?.StringEquals?.['aws:ResourceTag/lablink:deployment'], 'Environment') &&
        JSON.stringify(t.Condition?.['ForAllValues:StringEquals']?.['aws:TagKeys']) === JSON.stringify(VM_NAME_TAGS);
      assert.ok(atLaunch || ownNamesOnly, `CreateTags fenced: ${JSON.stringify(t.Condition)}`);
    }
    const pass = st.filter((x) => x.Action.includes('iam:PassRole'));
    assert.equal(pass.length, 1);
    assert.deepEqual(pass[0]!.Resource, [{ 'Fn::GetAtt': [roleOfVm(), 'Arn'] }]);
  });

  test('no wildcard actions anywhere, and none at all on EC2 or DynamoDB', () => {
    for (const st of allStatements(s)) {
      for (const a of st.Action) {
        assert.notEqual(a, '*', `${st.role}: Action "*"`);
        if (/^(ec2|dynamodb):/.test(a)) assert.ok(!a.includes('*'), `${st.role}: ${a}`);
        assert.ok(!a.endsWith(':*'), `${st.role}: ${a}`);
      }
    }
  });

  test('every function role writes only its own log group and has no broad managed policy', () => {
    for (const f of allFunctions) {
      const role = s.resources[roleOfFunction(s, f.function)];
      const managed = JSON.stringify(role.Properties.ManagedPolicyArns ?? []);
      assert.ok(!managed.includes('AWSLambdaBasicExecutionRole'), f.function);
      if (!f.db) assert.equal(role.Properties.ManagedPolicyArns?.length ?? 0, 0, f.function);
      const logs = statementsOfFunction(s, f.function).filter((st) => st.Action.some((a) => a.startsWith('logs:')));
      assert.equal(logs.length, 1, f.function);
      assert.equal(refId(logs[0]!.Resource[0]), refId(fn(s, f.function).Properties.LoggingConfig.LogGroup));
    }
  });

  test('the VM instance profile may only read the client daemon: no VM can write any log stream', () => {
    const vmRole = roleOfVm();
    const st = allStatements(s).filter((x) => x.role === vmRole);
    // Logs go to POST /api/vm-logs with the VM's own credential, which admits its own
    // hostname only; a CloudWatch permission could not be limited to the VM's stream.
    assert.deepEqual(actionsOf(st), new Set(['s3:GetObject']));
    for (const x of st) {
      assert.deepEqual(x.Action, ['s3:GetObject']);
      assert.deepEqual(x.Resource, [daemonObjectArn()]);
    }
    // Managed policies: none unless EnableSessionManager (describe('VM settings')).
    assert.equal(deployedWith(s).resources[vmRole].Properties.ManagedPolicyArns, undefined);
  });

  test('only jobs-table functions (and the provisioner) touch DynamoDB, on the jobs table only', () => {
    for (const f of allFunctions) {
      const st = statementsOfFunction(s, f.function).filter((x) => x.Action.some((a) => a.startsWith('dynamodb:')));
      const env = envOf(s, f.function);
      if (!f.jobsTable) {
        assert.equal(st.length, 0, `${f.function} has no DynamoDB rights`);
        assert.equal(env.LABLINK_JOBS_TABLE, undefined, f.function);
        continue;
      }
      assert.deepEqual(env.LABLINK_JOBS_TABLE, { Ref: tableId }, f.function);
      const allowed = new Set([...JOBS_TABLE_ACTIONS, 'dynamodb:ListStreams', 'dynamodb:DescribeStream', 'dynamodb:GetRecords', 'dynamodb:GetShardIterator']);
      for (const a of actionsOf(st)) assert.ok(allowed.has(a), `${f.function}: ${a}`);
      for (const x of st) {
        for (const r of x.Resource) {
          if (r === '*') assert.deepEqual(x.Action, ['dynamodb:ListStreams'], `${f.function}: only ListStreams on *`);
          else assert.ok(mentions(r, tableId), `${f.function}: ${JSON.stringify(r)}`);
        }
      }
    }
  });
});

describe('secrets', () => {
  const readers = manifest.http.filter((r) => r.adminSecret).map((r) => r.function);

  test('the admin secret holds user, password hash and a generated session key', () => {
    const g = adminSecret.Properties.GenerateSecretString;
    assert.equal(g.GenerateStringKey, 'session_key');
    assert.ok(g.PasswordLength >= 64);
    assert.equal(g.ExcludeUppercase, true);
    assert.equal(g.ExcludePunctuation, true);
    const template = JSON.stringify(g.SecretStringTemplate);
    assert.ok(template.includes('AdminUser') && template.includes('AdminPasswordHash'), template);
    assert.equal(s.json.Parameters.AdminPasswordHash.NoEcho, true);
  });

  test('admin routes get the secret ARN and GetSecretValue on it, nobody else does', () => {
    assert.ok(readers.includes('admin-login') && readers.includes('get-vm-status'));
    for (const f of allFunctions) {
      const env = envOf(s, f.function);
      const sm = statementsOfFunction(s, f.function).filter((x) => x.Action.some((a) => a.startsWith('secretsmanager:')));
      if (readers.includes(f.function)) {
        assert.deepEqual(env.LABLINK_ADMIN_SECRET_ID, { Ref: adminSecretId }, f.function);
        assert.equal(sm.length, 1, f.function);
        assert.deepEqual(sm[0]!.Action, ['secretsmanager:GetSecretValue']);
        assert.deepEqual(sm[0]!.Resource, [{ Ref: adminSecretId }]);
      } else {
        assert.equal(env.LABLINK_ADMIN_SECRET_ID, undefined, f.function);
        assert.equal(sm.length, 0, f.function);
      }
    }
  });

  test('no secret value and no password hash reaches an environment variable', () => {
    const envs = [
      ...ofType(s, 'AWS::Lambda::Function').map(([, r]) => r.Properties.Environment ?? {}),
      ...task.Properties.ContainerDefinitions.map((c: Json) => c.Environment ?? []),
    ];
    for (const e of envs) {
      const text = JSON.stringify(e);
      assert.ok(!text.includes('AdminPasswordHash'), text.slice(0, 200));
      assert.ok(!text.includes('SecretString') && !text.includes('resolve:secretsmanager'), text.slice(0, 200));
      assert.ok(!/PASSWORD|SESSION_KEY/.test(text), text.slice(0, 200));
    }
    const setup = task.Properties.ContainerDefinitions.find((c: Json) => c.Name === 'db-setup');
    assert.deepEqual(setup.Secrets.map((x: Json) => x.Name).sort(), ['PGPASSWORD', 'PGUSER']);
  });
});

describe('events', () => {
  test('the jobs table: pk/sk, on demand, new images on the stream, PITR, TTL', () => {
    const p = table.Properties;
    assert.deepEqual(p.KeySchema, [
      { AttributeName: 'pk', KeyType: 'HASH' },
      { AttributeName: 'sk', KeyType: 'RANGE' },
    ]);
    assert.equal(p.BillingMode, 'PAY_PER_REQUEST');
    assert.equal(p.StreamSpecification.StreamViewType, 'NEW_IMAGE');
    assert.equal(p.PointInTimeRecoverySpecification.PointInTimeRecoveryEnabled, true);
    assert.deepEqual(p.TimeToLiveSpecification, { AttributeName: 'expires_at', Enabled: true });
  });

  test('the stream feeds the provisioner with bounded retries and an on-failure queue', () => {
    const maps = ofType(s, 'AWS::Lambda::EventSourceMapping');
    assert.equal(maps.length, 1);
    const p = maps[0]![1].Properties;
    assert.equal(refId(p.FunctionName), functionsByName(s).get(provisionerName));
    assert.deepEqual(p.EventSourceArn, { 'Fn::GetAtt': [tableId, 'StreamArn'] });
    assert.ok(p.MaximumRetryAttempts >= 0 && p.MaximumRetryAttempts <= 10, `retries ${p.MaximumRetryAttempts}`);
    assert.ok(p.MaximumRecordAgeInSeconds > 0);
    assert.equal(p.BisectBatchOnFunctionError, true);
    const dest = refId(p.DestinationConfig.OnFailure.Destination)!;
    assert.equal(s.resources[dest].Type, 'AWS::SQS::Queue');
  });

  test('the VM log group is lablink-cloud-init-<environment> and feeds the log processor', () => {
    assert.deepEqual(vmLogGroup.Properties.LogGroupName, {
      'Fn::Join': ['', ['lablink-cloud-init-', { Ref: 'Environment' }]],
    });
    const filters = ofType(s, 'AWS::Logs::SubscriptionFilter');
    assert.equal(filters.length, 1);
    const p = filters[0]![1].Properties;
    assert.equal(refId(p.LogGroupName), vmLogGroupId);
    assert.equal(refId(p.DestinationArn), functionsByName(s).get(logProcessorName));
    const invoke = ofType(s, 'AWS::Lambda::Permission').filter(
      ([, r]) => r.Properties.Principal === 'logs.amazonaws.com',
    );
    assert.equal(invoke.length, 1);
    assert.equal(refId(invoke[0]![1].Properties.FunctionName), functionsByName(s).get(logProcessorName));
  });

  test('the provisioner gets the fleet settings; launch and destroy get the limits', () => {
    const env = envOf(s, provisionerName);
    for (const k of [
      'LABLINK_DEPLOYMENT',
      'LABLINK_AMI_ID',
      'LABLINK_INSTANCE_TYPE',
      'LABLINK_SUBNET_IDS',
      'LABLINK_SECURITY_GROUP_IDS',
      'LABLINK_INSTANCE_PROFILE_ARN',
      'LABLINK_MAX_VMS',
      'LABLINK_API_URL',
      'LABLINK_VM_LOG_GROUP',
      'LABLINK_JOBS_TABLE',
      'LABLINK_DAEMON_BUCKET',
      'LABLINK_DAEMON_KEY',
      'LABLINK_DAEMON_SHA256',
      'LABLINK_AMI_SSM_PARAMETER',
      'LABLINK_CLIENT_IMAGE',
      'LABLINK_TUTORIAL_REPO',
      'LABLINK_SUBJECT_SOFTWARE',
      'LABLINK_STARTUP_SCRIPT_B64',
      'LABLINK_STARTUP_ON_ERROR',
      'LABLINK_DESKTOP_USER',
      'LABLINK_VM_DISK_GB',
      'LABLINK_EXPORT_BUCKET',
      'LABLINK_EXPORT_EXTENSIONS',
      'LABLINK_EXPORT_MAX_FILE_MB',
      'LABLINK_EXPORT_WAIT_SECONDS',
    ]) {
      assert.ok(env[k] !== undefined, `provisioner: ${k}`);
    }
    assert.deepEqual(env.LABLINK_DEPLOYMENT, { Ref: 'Environment' });
    assert.deepEqual(env.LABLINK_VM_LOG_GROUP, { Ref: vmLogGroupId });
    for (const name of ['launch', 'destroy'].filter((n) => functionsByName(s).has(n))) {
      assert.deepEqual(envOf(s, name).LABLINK_MAX_VMS, { Ref: 'MaxVms' }, name);
      assert.deepEqual(envOf(s, name).LABLINK_DEPLOYMENT, { Ref: 'Environment' }, name);
    }
  });
});

describe('export bucket', () => {
  const exporters = allFunctions.filter((f) => f.exportBucket !== 'none');
  /** Every identity-policy statement that names the bucket (its ARN or its objects). */
  const onBucket = (role: string) => allStatements(s).filter((st) => st.role === role && mentions(st.Resource, bucketId));

  test('private, encrypted, TLS only, unversioned, expiring after ExportRetentionDays', () => {
    const p = bucket.Properties;
    assert.equal(p.BucketEncryption.ServerSideEncryptionConfiguration[0].ServerSideEncryptionByDefault.SSEAlgorithm, 'AES256');
    assert.deepEqual(p.PublicAccessBlockConfiguration, {
      BlockPublicAcls: true,
      BlockPublicPolicy: true,
      IgnorePublicAcls: true,
      RestrictPublicBuckets: true,
    });
    assert.notEqual(p.VersioningConfiguration?.Status, 'Enabled');
    assert.equal(p.BucketName, undefined, 'a generated name (deployments share an account)');
    const [rule, ...more] = p.LifecycleConfiguration.Rules;
    assert.equal(more.length, 0);
    assert.equal(rule.Status, 'Enabled');
    assert.equal(rule.Prefix ?? rule.Filter, undefined, 'the whole bucket expires');
    assert.deepEqual(rule.ExpirationInDays, { Ref: 'ExportRetentionDays' });
    assert.deepEqual(rule.AbortIncompleteMultipartUpload, { DaysAfterInitiation: 1 });
    const retention = s.json.Parameters.ExportRetentionDays;
    assert.equal(retention.Type, 'Number');
    assert.equal(retention.Default, 7);
    assert.ok(retention.MinValue >= 1);
    // Kept with its objects when the stack is deleted (like the database's final snapshot).
    assert.equal(bucket.DeletionPolicy, 'Retain');
    assert.ok(s.json.Outputs.ExportBucketName && mentions(s.json.Outputs.ExportBucketName.Value, bucketId));
  });

  test('its bucket policy only denies requests without TLS; it allows nobody anything', () => {
    const policies = ofType(s, 'AWS::S3::BucketPolicy').filter(([, r]) => refId(r.Properties.Bucket) === bucketId);
    assert.equal(policies.length, 1);
    const statements = policies[0]![1].Properties.PolicyDocument.Statement;
    for (const st of statements) assert.equal(st.Effect, 'Deny', JSON.stringify(st));
    assert.ok(statements.some((st: Json) => st.Condition?.Bool?.['aws:SecureTransport'] === 'false'), 'enforceSSL');
  });

  test('the manifest asks for it: export-download reads, the provisioner reads and writes', () => {
    assert.equal(manifest.http.find((r) => r.function === 'export-download')?.exportBucket, 'read');
    assert.equal(manifest.events.find((e) => e.function === provisionerName)?.exportBucket, 'readwrite');
    for (const name of ['scp-client', 'vm-export']) {
      assert.equal(manifest.http.find((r) => r.function === name)?.exportBucket, 'none', name);
    }
  });

  test('only functions with export_bucket may touch it, with exactly their access, on exports/ objects', () => {
    for (const f of allFunctions) {
      const role = roleOfFunction(s, f.function);
      const s3 = statementsOfFunction(s, f.function).filter((st) => st.Action.some((a) => a.startsWith('s3:')));
      if (f.exportBucket === 'none') {
        assert.equal(s3.length, 0, `${f.function} has no S3 rights`);
        assert.equal(onBucket(role).length, 0, `${f.function} names no bucket`);
        continue;
      }
      assert.deepEqual([...actionsOf(s3)].sort(), [...EXPORT_BUCKET_ACTIONS[f.exportBucket]].sort(), f.function);
      for (const st of s3) {
        assert.equal(st.Condition, undefined);
        assert.deepEqual(st.Resource, [{ 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, '/exports/*']] }], f.function);
      }
    }
  });

  test('admin-job, a page whose script reads the job through get-job, reaches no DynamoDB table (the jobs table holds stored AWS keys)', () => {
    const role = roleOfFunction(s, 'admin-job');
    const dynamo = allStatements(s).filter((st) => st.role === role && [...actionsOf([st])].some((a) => a.startsWith('dynamodb:')));
    assert.deepEqual(dynamo, []);
  });

  test('export-download may only read (GetObject, no write, no listing)', () => {
    const st = onBucket(roleOfFunction(s, 'export-download'));
    assert.ok(st.length > 0);
    assert.deepEqual(actionsOf(st), new Set(['s3:GetObject']));
    assert.deepEqual(EXPORT_BUCKET_ACTIONS.read, ['s3:GetObject']);
  });

  test('the provisioner may write multipart uploads but not delete or list', () => {
    const actions = actionsOf(onBucket(roleOfFunction(s, provisionerName)));
    for (const a of ['s3:GetObject', 's3:PutObject', 's3:AbortMultipartUpload', 's3:ListMultipartUploadParts']) {
      assert.ok(actions.has(a), a);
    }
    for (const a of actions) assert.ok(!/Delete|ListBucket|\*/.test(a), a);
  });

  test('the holder, the VMs and functions without the flag have no statement naming it', () => {
    const holderRole = refId(task.Properties.TaskRoleArn)!;
    const noAccess = [
      holderRole,
      taskExecRole(),
      roleOfVm(),
      roleOfFunction(s, 'scp-client'),
      roleOfFunction(s, 'vm-export'),
      roleOfFunction(s, logProcessorName),
    ];
    for (const role of noAccess) {
      assert.deepEqual(onBucket(role), [], role);
      // The VMs' one S3 right is reading the client daemon (describe('client daemon')).
      const s3 = allStatements(s).filter((st) => st.role === role && st.Action.some((a) => a.startsWith('s3:')));
      if (role === roleOfVm()) for (const st of s3) assert.deepEqual(st.Resource, [daemonObjectArn()], role);
      else assert.deepEqual(s3, [], role);
    }
    // Across the whole template: the roles naming the bucket are exactly the exporters'.
    const naming = new Set(allStatements(s).filter((st) => mentions(st.Resource, bucketId)).map((st) => st.role));
    assert.deepEqual(naming, new Set(exporters.map((f) => roleOfFunction(s, f.function))));
    assert.ok(!mentions(holder, bucketId), 'the holder is not told the bucket');
  });

  test('LABLINK_EXPORT_BUCKET goes to the exporters and the provisioner; the export settings to the provisioner', () => {
    for (const f of allFunctions) {
      const env = envOf(s, f.function);
      if (f.exportBucket !== 'none' || f.function === provisionerName) {
        assert.deepEqual(env.LABLINK_EXPORT_BUCKET, { Ref: bucketId }, f.function);
      } else {
        assert.ok(!mentions(env, bucketId), `${f.function} is not told the bucket`);
        assert.deepEqual(Object.keys(env).filter((k) => /EXPORT|S3/.test(k)), [], f.function);
      }
    }
    const env = envOf(s, provisionerName);
    assert.deepEqual(env.LABLINK_EXPORT_EXTENSIONS, { Ref: 'ExportExtensions' });
    assert.deepEqual(env.LABLINK_EXPORT_MAX_FILE_MB, { Ref: 'ExportMaxFileMb' });
    assert.deepEqual(env.LABLINK_EXPORT_WAIT_SECONDS, { Ref: 'ExportWaitSeconds' });
    const p = s.json.Parameters;
    assert.equal(p.ExportExtensions.Default, 'slp');
    assert.equal(p.ExportMaxFileMb.Default, 2048);
    assert.equal(p.ExportWaitSeconds.Default, 300);
    const pattern = new RegExp(p.ExportExtensions.AllowedPattern);
    for (const ok of ['slp', 'slp,h5', 'slp,mp4,h5']) assert.match(ok, pattern);
    for (const bad of ['', '.slp', 'slp,', 'slp, h5', '*.slp']) assert.doesNotMatch(bad, pattern);
    for (const name of manifest.http.filter((r) => r.exportBucket === 'none').map((r) => r.function)) {
      assert.equal(envOf(s, name).LABLINK_EXPORT_EXTENSIONS, undefined, name);
    }
  });
});

describe('holder', () => {
  test('Fargate, 0.25 vCPU and 0.5 GB, two tasks, listening on 8080', () => {
    assert.equal(task.Properties.Cpu, '256');
    assert.equal(task.Properties.Memory, '512');
    assert.deepEqual(task.Properties.RequiresCompatibilities, ['FARGATE']);
    assert.equal(deployedWith(s).resources[serviceId].Properties.DesiredCount, 2);
    assert.equal(service.Properties.LaunchType, 'FARGATE');
    assert.equal(service.Properties.NetworkConfiguration.AwsvpcConfiguration.AssignPublicIp, 'DISABLED');
    assert.deepEqual(holder.PortMappings.map((m: Json) => m.ContainerPort), [8080]);
    assert.equal(holderEnv.LABLINK_HOLDER_ADDR, '0.0.0.0:8080');
    assert.ok(holder.Ulimits.some((u: Json) => u.Name === 'nofile' && u.SoftLimit >= 65536));
  });

  test('health-checked on GET /healthz behind an internal load balancer', () => {
    assert.equal(targetGroup.Properties.HealthCheckPath, '/healthz');
    assert.equal(targetGroup.Properties.Port, 8080);
    assert.equal(targetGroup.Properties.TargetType, 'ip');
    assert.equal(alb.Properties.Scheme, 'internal');
  });

  test('the listener forwards every path to the holder (no path rules: /vm_startup and /vm_export alike)', () => {
    assert.equal(ofType(s, 'AWS::ElasticLoadBalancingV2::ListenerRule').length, 0, 'no listener rules');
    const actions = listener.Properties.DefaultActions;
    assert.equal(actions.length, 1);
    assert.equal(actions[0].Type, 'forward');
    assert.equal(refId(actions[0].TargetGroupArn), targetGroupId);
    assert.equal(listener.Properties.Port, 80);
    assert.equal(listener.Properties.Protocol, 'HTTP');
  });

  test('the load balancer idle timeout and the API timeout exceed the hold window', () => {
    const maxWait = Number(holderEnv.LABLINK_HOLDER_MAX_WAIT_SECONDS);
    const idle = Number(
      alb.Properties.LoadBalancerAttributes.find((a: Json) => a.Key === 'idle_timeout.timeout_seconds').Value,
    );
    assert.ok(idle > maxWait, `idle ${idle} > hold ${maxWait}`);
    assert.equal(idle, holderIdleTimeoutSeconds(maxWait));
    for (const key of holderRoutes) {
      const { integration } = routeTarget(s, key);
      assert.ok(integration.Properties.TimeoutInMillis > maxWait * 1000, key);
    }
    assert.ok(Number(holderEnv.LABLINK_HOLDER_DEFAULT_WAIT_SECONDS) <= maxWait);
  });

  test('functions that use the database are deployed after the holder service (so after its db-setup)', () => {
    const [serviceId] = the('AWS::ECS::Service');
    for (const f of allFunctions) {
      const dependsOn: string[] = [fn(s, f.function).DependsOn ?? []].flat();
      assert.equal(dependsOn.includes(serviceId), f.db, `${f.function}: ${dependsOn}`);
    }
  });

  test('starts after the db-setup container (its own image\'s setup-db: roles, migrations, grants) succeeded', () => {
    assert.deepEqual(holder.DependsOn, [{ ContainerName: 'db-setup', Condition: 'SUCCESS' }]);
    const setup = task.Properties.ContainerDefinitions.find((c: Json) => c.Name === 'db-setup');
    assert.equal(setup.Essential, false);
    // Our own image, not a third-party one, handles the master password.
    assert.deepEqual(setup.Image, holder.Image);
    assert.ok(!JSON.stringify(task).includes('postgres:'), 'no public postgres image');
    assert.equal(setup.EntryPoint, undefined, "the image's entry point: lablink-holder");
    assert.deepEqual(setup.Command, ['setup-db']);
    const env = Object.fromEntries(setup.Environment.map((e: Json) => [e.Name, e.Value]));
    assert.deepEqual(env.PGHOST, { 'Fn::GetAtt': [dbId, 'Endpoint.Address'] });
    assert.equal(env.PGSSLMODE, 'require');
    assert.equal(env.PGSSLROOTCERT, holderEnv.PGSSLROOTCERT);
    assert.equal(env.LABLINK_DB_IAM_AUTH, undefined, 'the master logs in with its password');
    assert.deepEqual(setup.Secrets.map((x: Json) => x.Name).sort(), ['PGPASSWORD', 'PGUSER']);
    // The holder itself never gets the master secret.
    assert.equal(holder.Secrets, undefined);
  });

  test('the holder image comes from the deployment\'s ECR repository at the given tag', () => {
    const image = JSON.stringify(holder.Image);
    assert.ok(image.includes('lablink-holder-') && image.includes('HolderImageTag'), image);
    const pull = allStatements(s).filter((x) => x.role === taskExecRole() && x.Action.includes('ecr:BatchGetImage'));
    assert.equal(pull.length, 1);
    assert.ok(JSON.stringify(pull[0]!.Resource).includes('repository/lablink-holder-'), 'pulls its own repository only');
  });
});

describe('network', () => {
  test('two availability zones; database in isolated subnets', () => {
    const subnets = ofType(s, 'AWS::EC2::Subnet');
    assert.equal(subnets.length, 6);
    const azs = new Set(subnets.map(([, r]) => JSON.stringify(r.Properties.AvailabilityZone)));
    assert.equal(azs.size, 2);
    const group = ofType(s, 'AWS::RDS::DBSubnetGroup')[0]![1];
    for (const id of group.Properties.SubnetIds.map(refId)) {
      assert.equal(s.resources[id].Properties.MapPublicIpOnLaunch, false);
      const tags = s.resources[id].Properties.Tags;
      assert.ok(tags.some((t: Json) => t.Key === 'aws-cdk:subnet-type' && t.Value === 'Isolated'), id);
    }
  });

  test('nothing is open to the world, and nothing allows SSH', () => {
    const ingress = [
      ...ofType(s, 'AWS::EC2::SecurityGroup').flatMap(([, r]) => r.Properties.SecurityGroupIngress ?? []),
      ...ofType(s, 'AWS::EC2::SecurityGroupIngress').map(([, r]) => r.Properties),
    ];
    assert.ok(ingress.length > 0);
    for (const rule of ingress) {
      assert.ok(rule.CidrIp !== '0.0.0.0/0' && rule.CidrIpv6 !== '::/0', JSON.stringify(rule));
      const from = rule.FromPort ?? 0;
      const to = rule.ToPort ?? 65535;
      assert.ok(rule.IpProtocol !== '-1' && !(from <= 22 && 22 <= to), `SSH: ${JSON.stringify(rule)}`);
    }
    const vmSg = ofType(s, 'AWS::EC2::SecurityGroup').find(([, r]) =>
      String(r.Properties.GroupDescription).includes('VMs'),
    )![1];
    assert.equal(vmSg.Properties.SecurityGroupIngress, undefined, 'VMs accept no connections');
  });
});

describe('parameters and outputs', () => {
  test('SAM parameters: environment, admin user, machine type, AMI, max VMs, allowed CIDRs, the workshop', () => {
    const p = s.json.Parameters;
    for (const k of [
      'Environment',
      'AdminUser',
      'AdminPasswordHash',
      'MachineType',
      'AmiId',
      'MaxVms',
      'AllowedCidrs',
      'ExportRetentionDays',
      'ExportExtensions',
      'ExportMaxFileMb',
      'ExportWaitSeconds',
      ...Object.keys(VM_SETTINGS),
      'AmiSsmParameter',
      'BootstrapDeadlineMinutes',
      'EnableSessionManager',
    ]) {
      assert.ok(p[k], k);
    }
    // Optional: empty picks AWS's current GPU image (describe('VM image')).
    assert.equal(p.AmiId.Type, 'String');
    assert.equal(p.AmiId.Default, '');
    assert.equal(p.AllowedCidrs.Type, 'CommaDelimitedList');
    assert.equal(p.BootstrapVersion, undefined, 'no CDK bootstrap needed');
  });

  test('the workshop gate\'s defaults reach the functions that apply or show it, and only those', () => {
    const gateVars = [
      'LABLINK_WORKSHOP_ACCESS_CODE',
      'LABLINK_WORKSHOP_PARTICIPANTS',
      'LABLINK_SEATS_PER_ADDRESS',
      'LABLINK_SEATS_WINDOW_MINUTES',
    ];
    const params = ['WorkshopAccessCode', 'WorkshopParticipants', 'SeatsPerAddress', 'SeatsWindowMinutes'];
    assert.equal(s.json.Parameters.WorkshopAccessCode.NoEcho, true, 'the access code is not shown by CloudFormation');
    for (const r of manifest.http) {
      const env = envOf(s, r.function);
      const gated = ['index', 'request-vm', 'admin-home', 'admin-workshop'].includes(r.function);
      gateVars.forEach((v, i) => {
        if (gated) assert.ok(mentions(env[v], params[i]!), `${r.function} ${v}`);
        else assert.equal(env[v], undefined, `${r.function} has no ${v}`);
      });
    }
  });

  test('every environment variable the infrastructure sets is read by the code', () => {
    // The Rust sources that run in AWS (functions, shared crates, holder, daemon).
    const roots = ['functions', 'shared', 'holder', 'client-daemon'].map((d) => path.join(infraRoot(), '..', d));
    const sources: string[] = [];
    const walk = (dir: string): void => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory() && e.name !== 'target' && e.name !== 'tests') walk(p);
        else if (e.isFile() && p.endsWith('.rs')) sources.push(fs.readFileSync(p, 'utf8'));
      }
    };
    roots.forEach(walk);
    const code = sources.join('\n');
    // Read by a library, not by name in our code.
    const byLibraries: Record<string, string> = { RUST_LOG: "tracing-subscriber's EnvFilter" };
    const set = new Map<string, string>();
    for (const [id, f] of ofType(s, 'AWS::Lambda::Function')) {
      for (const name of Object.keys(f.Properties.Environment?.Variables ?? {})) set.set(name, id);
    }
    for (const c of task.Properties.ContainerDefinitions) {
      for (const e of [...(c.Environment ?? []), ...(c.Secrets ?? [])]) set.set(e.Name, `container ${c.Name}`);
    }
    assert.ok(set.size > 20, `found ${set.size} variables`);
    const unread = [...set].filter(([name]) => !byLibraries[name] && !code.includes(`"${name}"`));
    assert.deepEqual(unread, [], 'set by the infrastructure but read nowhere');
  });

  test('the fleet end time: a schedule invokes the provisioner every minute; the launch pages get the default life', () => {
    const rules = ofType(s, 'AWS::Events::Rule');
    assert.equal(rules.length, 1, 'one schedule');
    const [, rule] = rules[0]!;
    assert.equal(rule.Properties.ScheduleExpression, 'rate(1 minute)');
    assert.equal(deployedWith(s).resources[rules[0]![0]].Properties.State, 'ENABLED');
    const targets = rule.Properties.Targets as Json[];
    assert.equal(targets.length, 1);
    assert.equal(refId(targets[0].Arn), functionsByName(s).get(provisionerName));
    // EventBridge may invoke the provisioner (and only it).
    const perms = ofType(s, 'AWS::Lambda::Permission').filter(([, p]) => p.Properties.Principal === 'events.amazonaws.com');
    assert.equal(perms.length, 1);
    assert.equal(refId(perms[0]![1].Properties.FunctionName), functionsByName(s).get(provisionerName));
    assert.equal(s.json.Parameters.FleetHours.Default, 12);
    for (const r of manifest.http) {
      const env = envOf(s, r.function);
      const wanted = ['launch', 'admin-create', 'admin-home', 'admin-fleet-end'].includes(r.function);
      if (wanted) assert.ok(mentions(env.LABLINK_FLEET_HOURS, 'FleetHours'), r.function);
      else assert.equal(env.LABLINK_FLEET_HOURS, undefined, r.function);
    }
  });

  test('admin routes get the allowed CIDRs', () => {
    for (const r of manifest.http.filter((x) => x.access === 'admin')) {
      assert.ok(mentions(envOf(s, r.function).LABLINK_ADMIN_ALLOWED_CIDRS, 'AllowedCidrs'), r.function);
    }
  });

  test('outputs the API URL, the holder URL and the URLs of the holder\'s routes', () => {
    const o = s.json.Outputs;
    assert.ok(o.ApiUrl && o.HolderUrl && o.VmStartupUrl && o.VmExportUrl);
    assert.ok(JSON.stringify(o.VmStartupUrl.Value).endsWith('vm_startup"]]}'), JSON.stringify(o.VmStartupUrl.Value));
    assert.ok(JSON.stringify(o.VmExportUrl.Value).endsWith('vm_export"]]}'), JSON.stringify(o.VmExportUrl.Value));
    assert.ok(JSON.stringify(o.ApiUrl.Value).includes('execute-api'));
    assert.ok(mentions(o.HolderUrl.Value, the('AWS::ElasticLoadBalancingV2::LoadBalancer')[0]));
  });
});

describe('client daemon', () => {
  const sha256 = (file: string): string => createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  const standIn = path.join(infraRoot(), '.stand-in-lambdas', 'lablink-client-daemon', 'lablink-client-daemon');

  test('ships with the deployment as a file asset; the provisioner gets its bucket, key and SHA-256', () => {
    const assembly = s.built.app.synth();
    const manifestFile = path.join(assembly.directory, 'LabLink.assets.json');
    const files = JSON.parse(fs.readFileSync(manifestFile, 'utf8')).files as Record<string, Json>;
    const found = Object.entries(files).filter(([, f]) =>
      Object.values(f.destinations).some((d: Json) => d.objectKey === daemonEnv.LABLINK_DAEMON_KEY),
    );
    assert.equal(found.length, 1, 'one asset is the daemon');
    const [assetHash, asset] = found[0]!;
    assert.equal(asset.source.packaging, 'file');
    const [dest] = Object.values(asset.destinations) as Json[];
    assert.deepEqual(daemonEnv.LABLINK_DAEMON_BUCKET, { 'Fn::Sub': dest.bucketName });
    // The SHA-256 of the file's bytes (the stand-in here), not CDK's asset hash.
    assert.match(fs.readFileSync(standIn, 'utf8'), /stand-in for lablink-client-daemon/);
    assert.equal(daemonEnv.LABLINK_DAEMON_SHA256, sha256(standIn));
    assert.equal(sha256(path.join(assembly.directory, asset.source.path)), sha256(standIn), 'the uploaded file');
    assert.notEqual(daemonEnv.LABLINK_DAEMON_SHA256, assetHash);
  });

  test('the VMs may s3:GetObject that one object, and nothing else in its bucket', () => {
    const bucket = JSON.stringify(daemonEnv.LABLINK_DAEMON_BUCKET);
    const naming = allStatements(s).filter((st) => JSON.stringify(st.Resource).includes(bucket));
    assert.equal(naming.length, 1, JSON.stringify(naming));
    const [st] = naming;
    assert.equal(st!.role, roleOfVm());
    assert.equal(st!.Effect, 'Allow');
    assert.deepEqual(st!.Action, ['s3:GetObject']);
    assert.deepEqual(st!.Resource, [daemonObjectArn()]);
    assert.equal(st!.Condition, undefined);
    // Not the bucket, not bucket/*: the ARN ends with the object's key.
    const tail = st!.Resource[0]['Fn::Join'][1].at(-1);
    assert.equal(tail, `/${daemonEnv.LABLINK_DAEMON_KEY}`);
    assert.ok(!String(daemonEnv.LABLINK_DAEMON_KEY).includes('*'));
  });

  test('DaemonUrl is gone: no parameter, no variable', () => {
    assert.equal(s.json.Parameters.DaemonUrl, undefined);
    for (const f of allFunctions) assert.equal(envOf(s, f.function).LABLINK_DAEMON_URL, undefined, f.function);
    assert.ok(!JSON.stringify(s.json).includes('DaemonUrl'));
  });
});

describe('VM image', () => {
  const p = s.json.Parameters;

  test('AmiId is optional; AmiSsmParameter defaults to the Deep Learning Base GPU AMI for Ubuntu 24.04', () => {
    assert.equal(p.AmiId.Default, '');
    const ami = new RegExp(p.AmiId.AllowedPattern);
    for (const ok of ['', 'ami-12345678', 'ami-0123456789abcdef0']) assert.match(ok, ami);
    for (const bad of ['ami-', 'ami-XYZ12345', ' ami-12345678', 'ami-0123456789abcdef01']) assert.doesNotMatch(bad, ami);
    assert.equal(
      DEFAULT_AMI_SSM_PARAMETER,
      '/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id',
    );
    assert.equal(p.AmiSsmParameter.Default, DEFAULT_AMI_SSM_PARAMETER);
    const ssm = new RegExp(p.AmiSsmParameter.AllowedPattern);
    assert.ok(p.AmiSsmParameter.AllowedPattern.startsWith('^/aws/service/'));
    assert.match(DEFAULT_AMI_SSM_PARAMETER, ssm);
    for (const bad of ['', '/aws/service/', '/my/own/ami', 'aws/service/x', '/aws/service/x y']) assert.doesNotMatch(bad, ssm);
    const env = envOf(s, provisionerName);
    assert.deepEqual(env.LABLINK_AMI_ID, { Ref: 'AmiId' });
    assert.deepEqual(env.LABLINK_AMI_SSM_PARAMETER, { Ref: 'AmiSsmParameter' });
  });

  test('the provisioner may ssm:GetParameter public /aws/service/* parameters only; nobody else reads SSM', () => {
    const st = allStatements(s).filter((x) => x.Action.some((a) => a.startsWith('ssm:')));
    assert.equal(st.length, 1);
    assert.equal(st[0]!.role, roleOfFunction(s, provisionerName));
    assert.deepEqual(st[0]!.Action, ['ssm:GetParameter']);
    assert.deepEqual(st[0]!.Resource, [
      {
        'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':ssm:', { Ref: 'AWS::Region' }, '::parameter/aws/service/*']],
      },
    ]);
  });

  test('without AmiId the provisioner may launch Amazon-owned images only; with one, exactly that image', () => {
    const imageStatements = (d: ReturnType<typeof deployedWith>) =>
      statementsOfFunction(d, provisionerName).filter(
        (x) => x.Action.includes('ec2:RunInstances') && JSON.stringify(x.Resource).includes('image/'),
      );
    const imageArn = (...tail: Json[]) => ({
      'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, ':ec2:', { Ref: 'AWS::Region' }, ...tail]],
    });
    const byDefault = imageStatements(deployedWith(s));
    assert.equal(byDefault.length, 1);
    assert.deepEqual(byDefault[0]!.Resource, [imageArn('::image/*')]);
    assert.deepEqual(byDefault[0]!.Condition, { StringLike: { 'ec2:Owner': 'amazon' } });
    const given = imageStatements(deployedWith(s, { AmiId: 'ami-0123456789abcdef0' }));
    assert.equal(given.length, 1);
    assert.deepEqual(given[0]!.Resource, [imageArn('::image/', { Ref: 'AmiId' })]);
    assert.deepEqual(given[0]!.Condition, { StringLike: { 'ec2:Owner': '*' } }, 'any owner: the ARN pins the image');
  });

  test('the provisioner may look up images (the root device VmDiskGb sizes), which has no resource-level permission', () => {
    const st = statementsOfFunction(s, provisionerName).filter((x) => x.Action.includes('ec2:DescribeImages'));
    assert.equal(st.length, 1);
    assert.deepEqual(st[0]!.Resource, ['*']);
    assert.ok(st[0]!.Action.every((a) => a.startsWith('ec2:Describe')), 'only Describe calls on *');
  });
});

describe('VM settings', () => {
  const p = s.json.Parameters;

  test('each workshop parameter reaches the provisioner, and no other function', () => {
    const env = envOf(s, provisionerName);
    for (const [param, variable] of Object.entries(VM_SETTINGS)) {
      assert.deepEqual(env[variable], { Ref: param }, `${param} → ${variable}`);
      for (const f of allFunctions.filter((x) => x.function !== provisionerName)) {
        assert.ok(!mentions(envOf(s, f.function), param), `${f.function} is not told ${param}`);
      }
    }
  });

  test('their defaults', () => {
    const defaults: Record<string, unknown> = {
      MachineType: 'g4dn.xlarge',
      AmiId: '',
      AmiSsmParameter: DEFAULT_AMI_SSM_PARAMETER,
      TutorialRepo: '',
      SubjectSoftware: 'sleap',
      StartupScriptB64: '',
      StartupOnError: 'continue',
      DesktopUser: 'client',
      VmDiskGb: 100,
      BootstrapDeadlineMinutes: 20,
      EnableSessionManager: 'false',
    };
    for (const [k, v] of Object.entries(defaults)) assert.deepEqual(p[k].Default, v, k);
    // No default image: a default could only be a tag, and tags move.
    assert.equal(p.ClientImage.Default, undefined, 'ClientImage is required');
    // Every default passes its own validation.
    for (const k of Object.keys(defaults)) {
      if (p[k].AllowedPattern) assert.match(String(p[k].Default), new RegExp(p[k].AllowedPattern), k);
      if (p[k].AllowedValues) assert.ok(p[k].AllowedValues.includes(p[k].Default), k);
      if (p[k].MaxLength !== undefined) assert.ok(String(p[k].Default).length <= p[k].MaxLength, k);
    }
  });

  test('their validation: allowed values, patterns, ranges', () => {
    assert.deepEqual(p.StartupOnError.AllowedValues, ['continue', 'fail']);
    assert.deepEqual(p.EnableSessionManager.AllowedValues, ['true', 'false']);
    for (const [k, min, max] of [
      ['VmDiskGb', 30, 2000],
      ['BootstrapDeadlineMinutes', 5, 120],
    ] as const) {
      assert.equal(p[k].Type, 'Number', k);
      assert.equal(p[k].MinValue, min, k);
      assert.equal(p[k].MaxValue, max, k);
    }
    const cases: Record<string, { ok: string[]; bad: string[] }> = {
      ClientImage: {
        ok: [
          `ghcr.io/talmolab/lablink-client@sha256:${'0123456789abcdef'.repeat(4)}`,
          `registry.example.com:5000/team/image@sha256:${'a'.repeat(64)}`,
        ],
        bad: [
          '',
          'ghcr.io/talmolab/lablink-client-base-image:linux-amd64-latest',
          'ubuntu:22.04',
          'registry.example.com:5000/team/image@sha256:0123abcd',
          `image:tag extra@sha256:${'a'.repeat(64)}`,
          `$(reboot)@sha256:${'a'.repeat(64)}`,
          `-image@sha256:${'a'.repeat(64)}`,
        ],
      },
      TutorialRepo: {
        ok: ['', 'https://github.com/talmolab/sleap-tutorial-data.git', 'git://127.0.0.1:9418/repo.git'],
        bad: ['http://example.com/repo.git', 'https://a b', 'git@github.com:org/repo.git', 'file:///etc', 'https://'],
      },
      SubjectSoftware: { ok: ['sleap', 'sleap-nn', 'napari'], bad: ['', 'two words', '../sleap', 'sleap;reboot'] },
      StartupScriptB64: {
        ok: ['', 'ZWNobyBoaQo=', Buffer.from('#!/bin/sh\napt-get install -y htop\n').toString('base64')],
        bad: ['echo hi', 'ZWNo\nbw==', 'ZWNo-bw=='],
      },
      DesktopUser: { ok: ['client', '_svc', 'user-1', 'a'.repeat(32)], bad: ['', 'Client', '1user', 'a'.repeat(33), 'two users'] },
      MachineType: { ok: ['g4dn.xlarge', 'g5.2xlarge', 'p4d.24xlarge'], bad: ['', 'g4dn', 'g4dn xlarge'] },
    };
    for (const [k, { ok, bad }] of Object.entries(cases)) {
      const accepts = (v: string): boolean =>
        new RegExp(p[k].AllowedPattern).test(v) && (p[k].MaxLength === undefined || v.length <= p[k].MaxLength);
      for (const v of ok) assert.ok(accepts(v), `${k} accepts ${JSON.stringify(v)}`);
      for (const v of bad) assert.ok(!accepts(v), `${k} refuses ${JSON.stringify(v)}`);
    }
    assert.equal(p.StartupScriptB64.MaxLength, STARTUP_SCRIPT_B64_MAX);
    assert.equal(STARTUP_SCRIPT_B64_MAX % 4, 0, 'whole base64 quanta');
  });

  test('the holder gets BootstrapDeadlineMinutes; the provisioner does not', () => {
    assert.deepEqual(holderEnv.LABLINK_BOOTSTRAP_DEADLINE_MINUTES, { Ref: 'BootstrapDeadlineMinutes' });
    assert.equal(envOf(s, provisionerName).LABLINK_BOOTSTRAP_DEADLINE_MINUTES, undefined);
  });

  test(`Session Manager: ${SESSION_MANAGER_POLICY} on the VMs only when EnableSessionManager is true`, () => {
    assert.deepEqual(s.json.Conditions.SessionManagerEnabled, { 'Fn::Equals': [{ Ref: 'EnableSessionManager' }, 'true'] });
    const policyArn = {
      'Fn::Join': ['', ['arn:', { Ref: 'AWS::Partition' }, `:iam::aws:policy/${SESSION_MANAGER_POLICY}`]],
    };
    /** The roles that get the policy in a deployment. */
    const withPolicy = (d: ReturnType<typeof deployedWith>) =>
      Object.entries(d.resources)
        .filter(([, r]) => JSON.stringify(r.Properties?.ManagedPolicyArns ?? []).includes(SESSION_MANAGER_POLICY))
        .map(([id]) => id);
    const off = deployedWith(s);
    assert.equal(off.resources[roleOfVm()].Properties.ManagedPolicyArns, undefined, 'off by default');
    assert.deepEqual(withPolicy(off), []);
    const on = deployedWith(s, { EnableSessionManager: 'true' });
    assert.deepEqual(on.resources[roleOfVm()].Properties.ManagedPolicyArns, [policyArn]);
    assert.deepEqual(withPolicy(on), [roleOfVm()], 'the VM role only');
  });

  test("the provisioner's environment fits Lambda's 4 KB with every value at its longest", () => {
    const env = envOf(s, provisionerName);
    const longest = Object.fromEntries(Object.entries(env).map(([k, v]) => [k, 'x'.repeat(worstCaseLength(s, v))]));
    const size = Buffer.byteLength(JSON.stringify(longest));
    assert.ok(size <= 4096, `${size} bytes: lower STARTUP_SCRIPT_B64_MAX or another parameter's MaxLength`);
    assert.equal(longest.LABLINK_STARTUP_SCRIPT_B64!.length, STARTUP_SCRIPT_B64_MAX);
  });
});

/** The one S3 object the VMs may read: the client daemon. */
function daemonObjectArn(): Json {
  return {
    'Fn::Join': [
      '',
      ['arn:', { Ref: 'AWS::Partition' }, ':s3:::', daemonEnv.LABLINK_DAEMON_BUCKET, `/${daemonEnv.LABLINK_DAEMON_KEY}`],
    ],
  };
}

function roleOfVm(): string {
  const profile = the('AWS::IAM::InstanceProfile')[1];
  return refId(profile.Properties.Roles[0])!;
}

function taskExecRole(): string {
  return refId(task.Properties.ExecutionRoleArn)!;
}
