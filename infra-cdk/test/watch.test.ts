// What watches a deployment (lib/watch.ts) and its optional stable address: JSON logs from
// every function, the alarm topic and its optional email, each alarm's metric, threshold
// and action, the dashboard, the optional budget, and the custom domain, present only
// when DomainName is set, which the VMs and the outputs then use.

import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { HOLDER_TASKS } from '../lib/lablink-stack';
import { infraRoot, loadManifest } from '../lib/manifest';
import { API_5XX_MIN_REQUESTS, API_5XX_PERCENT, LOG_EVENTS } from '../lib/watch';
import { brokenRules, deployedWith, envOf, fn, Json, ofType, refId, Synth, synth } from './template';

const s = synth();
const manifest = loadManifest();
const provisionerName = manifest.events.find((e) => e.trigger === 'dynamodb-stream')!.function;
const one = (t: Synth, type: string): [string, Json] => {
  const found = ofType(t, type);
  assert.equal(found.length, 1, `exactly one ${type}: ${found.map(([id]) => id).join(', ')}`);
  return found[0]!;
};
const [topicId] = one(s, 'AWS::SNS::Topic');
const [queueId] = one(s, 'AWS::SQS::Queue');
const [apiId] = one(s, 'AWS::ApiGatewayV2::Api');
const [stageId] = one(s, 'AWS::ApiGatewayV2::Stage');
const [targetGroupId] = one(s, 'AWS::ElasticLoadBalancingV2::TargetGroup');
const [serviceId] = one(s, 'AWS::ECS::Service');
const [, task] = one(s, 'AWS::ECS::TaskDefinition');
const holderLogGroup = refId(
  task.Properties.ContainerDefinitions.find((c: Json) => c.Name === 'holder').LogConfiguration.Options['awslogs-group'],
);
const provisionerLogGroup = refId(fn(s, provisionerName).Properties.LoggingConfig.LogGroup);
const ourNamespace = { 'Fn::Join': ['/', ['LabLink', { Ref: 'Environment' }]] };

/** The logical id of the alarm named lablink-<environment>-<name>. */
function alarmId(name: string): string {
  const found = ofType(s, 'AWS::CloudWatch::Alarm').filter(
    ([, r]) => JSON.stringify(r.Properties.AlarmName) === JSON.stringify({ 'Fn::Join': ['', ['lablink-', { Ref: 'Environment' }, `-${name}`]] }),
  );
  assert.equal(found.length, 1, `one alarm ${name}`);
  return found[0]![0];
}

/** The properties of the alarm named lablink-<environment>-<name>, as synthesized. */
function alarm(name: string): Json {
  return s.resources[alarmId(name)].Properties;
}

/** The metric filter that makes `metricName` in our namespace. */
function filterOf(metricName: string): Json {
  const found = ofType(s, 'AWS::Logs::MetricFilter').filter(([, r]) =>
    r.Properties.MetricTransformations.some((m: Json) => m.MetricName === metricName),
  );
  assert.equal(found.length, 1, `one metric filter for ${metricName}`);
  const p = found[0]![1].Properties;
  assert.deepEqual(p.MetricTransformations[0].MetricNamespace, ourNamespace);
  return p;
}

/** The Rust sources that run on AWS, to check the events the filters count are logged. */
function rustSources(): string {
  const out: string[] = [];
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory() && e.name !== 'target' && e.name !== 'tests') walk(p);
      else if (e.isFile() && p.endsWith('.rs')) out.push(fs.readFileSync(p, 'utf8'));
    }
  };
  for (const d of ['functions', 'shared', 'holder']) walk(path.join(infraRoot(), '..', d));
  return out.join('\n');
}

describe('logs', () => {
  test('every function writes JSON lines to its own log group', () => {
    const fns = ofType(s, 'AWS::Lambda::Function');
    assert.equal(fns.length, manifest.http.length + manifest.events.length);
    for (const [id, r] of fns) {
      assert.equal(r.Properties.LoggingConfig?.LogFormat, 'JSON', id);
      assert.equal(s.resources[refId(r.Properties.LoggingConfig.LogGroup)!]?.Type, 'AWS::Logs::LogGroup', id);
    }
  });

  test('the events the metric filters count are logged by the code, under that name', () => {
    const code = rustSources();
    for (const event of Object.values(LOG_EVENTS)) {
      assert.ok(code.includes(`event = "${event}"`), `no tracing line logs event = "${event}"`);
    }
    // The holder's count carries the two fields the filters read.
    assert.ok(/event = "vm_states",\s*in_error = [^,]+,\s*initializing_overdue = /.test(code), 'vm_states fields');
  });
});

describe('alarm topic', () => {
  test('CloudWatch and Budgets may publish to it, for this account only', () => {
    const [, policy] = one(s, 'AWS::SNS::TopicPolicy');
    assert.deepEqual(policy.Properties.Topics, [{ Ref: topicId }]);
    const byService = new Map<string, Json>(
      policy.Properties.PolicyDocument.Statement.map((st: Json) => [st.Principal.Service, st]),
    );
    assert.deepEqual([...byService.keys()].sort(), ['budgets.amazonaws.com', 'cloudwatch.amazonaws.com']);
    for (const st of byService.values()) {
      assert.equal(st.Effect, 'Allow');
      assert.equal(st.Action, 'sns:Publish');
      assert.deepEqual(st.Resource, { Ref: topicId });
      assert.deepEqual(st.Condition.StringEquals, { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } });
    }
  });

  test('the admin email subscribes only when AlarmEmail is set', () => {
    assert.equal(s.json.Parameters.AlarmEmail.Default, '');
    assert.deepEqual(ofType(deployedWith(s), 'AWS::SNS::Subscription'), []);
    const [, sub] = one(deployedWith(s, { AlarmEmail: 'ops@example.org' }), 'AWS::SNS::Subscription');
    assert.equal(sub.Properties.Protocol, 'email');
    assert.deepEqual(sub.Properties.Endpoint, { Ref: 'AlarmEmail' });
    assert.deepEqual(sub.Properties.TopicArn, { Ref: topicId });
    const pattern = new RegExp(s.json.Parameters.AlarmEmail.AllowedPattern);
    for (const ok of ['', 'ops@example.org']) assert.ok(pattern.test(ok), ok);
    for (const bad of ['ops', 'a b@example.org', 'ops@example']) assert.ok(!pattern.test(bad), bad);
  });

  test('the stack outputs the topic and the dashboard', () => {
    assert.deepEqual(s.json.Outputs.AlarmTopicArn.Value, { Ref: topicId });
    assert.deepEqual(s.json.Outputs.DashboardName.Value, { 'Fn::Join': ['', ['lablink-', { Ref: 'Environment' }]] });
  });
});

describe('alarms', () => {
  const NAMES = [
    'JobsFailed',
    'JobsDeadLettered',
    'HolderUnhealthy',
    'Api5xxRate',
    'VmsInError',
    'VmsStuckInitializing',
    'ExportUploadsLeftOver',
  ];

  test('exactly these alarms; each notifies the topic when it fires and when it clears', () => {
    assert.equal(ofType(s, 'AWS::CloudWatch::Alarm').length, NAMES.length);
    for (const name of NAMES) {
      const a = alarm(name);
      assert.deepEqual(a.AlarmActions, [{ Ref: topicId }], name);
      assert.deepEqual(a.OKActions, [{ Ref: topicId }], name);
      assert.equal(a.DatapointsToAlarm, a.EvaluationPeriods, `${name}: every period of the window`);
      assert.match(a.AlarmDescription, /docs\/operations\.md/, name);
    }
  });

  test('failed jobs: any job_failed line of the provisioner in 5 minutes', () => {
    const f = filterOf('JobsFailed');
    assert.equal(f.FilterPattern, `{ $.fields.event = "${LOG_EVENTS.jobFailed}" }`);
    assert.equal(refId(f.LogGroupName), provisionerLogGroup);
    assert.equal(f.MetricTransformations[0].MetricValue, '1');
    const a = alarm('JobsFailed');
    assert.deepEqual(a.Namespace, ourNamespace);
    assert.equal(a.MetricName, 'JobsFailed');
    assert.deepEqual([a.Statistic, a.Period, a.EvaluationPeriods], ['Sum', 300, 1]);
    assert.deepEqual([a.ComparisonOperator, a.Threshold], ['GreaterThanOrEqualToThreshold', 1]);
    assert.equal(a.TreatMissingData, 'notBreaching');
  });

  test("dead-lettered jobs: any message in the provisioner's failure queue", () => {
    const a = alarm('JobsDeadLettered');
    assert.equal(a.Namespace, 'AWS/SQS');
    assert.equal(a.MetricName, 'ApproximateNumberOfMessagesVisible');
    assert.deepEqual(a.Dimensions, [{ Name: 'QueueName', Value: { 'Fn::GetAtt': [queueId, 'QueueName'] } }]);
    assert.deepEqual([a.Statistic, a.Period, a.EvaluationPeriods], ['Maximum', 300, 1]);
    assert.deepEqual([a.ComparisonOperator, a.Threshold], ['GreaterThanOrEqualToThreshold', 1]);
    // The provisioner's stream sends its failures to that queue.
    const [, mapping] = one(s, 'AWS::Lambda::EventSourceMapping');
    assert.equal(refId(mapping.Properties.DestinationConfig.OnFailure.Destination), queueId);
  });

  test('holder unhealthy: fewer healthy targets than tasks for 5 minutes, and no data counts as none', () => {
    const a = alarm('HolderUnhealthy');
    assert.equal(a.Namespace, 'AWS/ApplicationELB');
    assert.equal(a.MetricName, 'HealthyHostCount');
    const tg = a.Dimensions.find((d: Json) => d.Name === 'TargetGroup');
    assert.deepEqual(tg.Value, { 'Fn::GetAtt': [targetGroupId, 'TargetGroupFullName'] });
    assert.ok(a.Dimensions.some((d: Json) => d.Name === 'LoadBalancer'));
    const running = deployedWith(s);
    const r = running.resources[alarmId('HolderUnhealthy')].Properties;
    assert.equal(running.resources[serviceId].Properties.DesiredCount, HOLDER_TASKS);
    assert.deepEqual([a.Statistic, a.Period, a.EvaluationPeriods], ['Minimum', 60, 5]);
    assert.deepEqual([r.ComparisonOperator, r.Threshold], ['LessThanThreshold', HOLDER_TASKS]);
    assert.equal(r.TreatMissingData, 'breaching');
  });

  test(`API 5xx rate: over ${API_5XX_PERCENT}% of at least ${API_5XX_MIN_REQUESTS} requests in 5 minutes`, () => {
    const a = alarm('Api5xxRate');
    assert.equal(a.MetricName, undefined, 'a metric-math alarm');
    const byId = new Map<string, Json>(a.Metrics.map((m: Json) => [m.Id, m]));
    const expr = a.Metrics.find((m: Json) => m.Expression);
    assert.equal(expr.Expression, `IF(requests >= ${API_5XX_MIN_REQUESTS}, 100 * errors / requests, 0)`);
    assert.equal(expr.ReturnData, true);
    for (const [id, name] of [['requests', 'Count'], ['errors', '5xx']] as const) {
      const m = byId.get(id)!.MetricStat;
      assert.equal(m.Metric.Namespace, 'AWS/ApiGateway');
      assert.equal(m.Metric.MetricName, name);
      assert.deepEqual(m.Metric.Dimensions, [{ Name: 'ApiId', Value: { Ref: apiId } }]);
      assert.deepEqual([m.Stat, m.Period], ['Sum', 300]);
      assert.equal(byId.get(id)!.ReturnData, false);
    }
    assert.deepEqual([a.ComparisonOperator, a.Threshold, a.EvaluationPeriods], ['GreaterThanThreshold', API_5XX_PERCENT, 1]);
    assert.equal(a.TreatMissingData, 'notBreaching');
  });

  test("VMs in error and stuck initializing: the holder's vm_states count, at its maximum", () => {
    for (const [metric, field, name, periods] of [
      ['VmsInError', 'in_error', 'VmsInError', 1],
      ['VmsInitializingOverdue', 'initializing_overdue', 'VmsStuckInitializing', 2],
    ] as const) {
      const f = filterOf(metric);
      assert.equal(f.FilterPattern, `{ $.fields.event = "${LOG_EVENTS.vmStates}" }`);
      assert.equal(refId(f.LogGroupName), holderLogGroup, `${metric} reads the holder's log group`);
      assert.equal(f.MetricTransformations[0].MetricValue, `$.fields.${field}`);
      const a = alarm(name);
      assert.deepEqual([a.Namespace, a.MetricName], [ourNamespace, metric]);
      // Two holder tasks log the same count: the maximum, never the sum.
      assert.deepEqual([a.Statistic, a.Period, a.EvaluationPeriods], ['Maximum', 300, periods]);
      assert.deepEqual([a.ComparisonOperator, a.Threshold], ['GreaterThanOrEqualToThreshold', 1]);
    }
  });

  test("export multipart leftovers: an upload the provisioner could not abort; the bucket's rule aborts any after a day", () => {
    const f = filterOf('ExportUploadsNotAborted');
    assert.equal(f.FilterPattern, `{ $.fields.event = "${LOG_EVENTS.exportUploadNotAborted}" }`);
    assert.equal(refId(f.LogGroupName), provisionerLogGroup);
    const a = alarm('ExportUploadsLeftOver');
    assert.deepEqual([a.Namespace, a.MetricName, a.Statistic, a.Period], [ourNamespace, 'ExportUploadsNotAborted', 'Sum', 300]);
    assert.deepEqual([a.ComparisonOperator, a.Threshold], ['GreaterThanOrEqualToThreshold', 1]);
    const [, bucket] = one(s, 'AWS::S3::Bucket');
    const rules = bucket.Properties.LifecycleConfiguration.Rules;
    assert.ok(rules.some((r: Json) => r.AbortIncompleteMultipartUpload?.DaysAfterInitiation === 1 && r.Status === 'Enabled'));
  });
});

describe('dashboard', () => {
  test('one dashboard, named after the deployment, with every alarm and the main metrics', () => {
    const [, d] = one(s, 'AWS::CloudWatch::Dashboard');
    assert.deepEqual(d.Properties.DashboardName, { 'Fn::Join': ['', ['lablink-', { Ref: 'Environment' }]] });
    const body = JSON.stringify(d.Properties.DashboardBody);
    for (const [id] of ofType(s, 'AWS::CloudWatch::Alarm')) assert.ok(body.includes(`"${id}"`), `alarm ${id} on the dashboard`);
    for (const metric of [
      'Count',
      '5xx',
      'HealthyHostCount',
      'UnHealthyHostCount',
      'VmsInError',
      'VmsInitializingOverdue',
      'JobsFailed',
      'ApproximateNumberOfMessagesVisible',
      'Errors',
      'Throttles',
      'CPUUtilization',
      'DatabaseConnections',
      'ExportUploadsNotAborted',
    ]) {
      assert.ok(body.includes(`\\"${metric}\\"`), `${metric} on the dashboard`);
    }
    // Every function's errors are summed on it.
    for (const [id] of ofType(s, 'AWS::Lambda::Function')) assert.ok(body.includes(`"${id}"`), `${id} on the dashboard`);
  });
});

describe('budget', () => {
  test('none unless MonthlyBudgetUsd is set (0 or empty: none)', () => {
    assert.equal(s.json.Parameters.MonthlyBudgetUsd.Default, '0');
    for (const v of ['0', '']) assert.deepEqual(ofType(deployedWith(s, { MonthlyBudgetUsd: v }), 'AWS::Budgets::Budget'), [], v);
    const pattern = new RegExp(s.json.Parameters.MonthlyBudgetUsd.AllowedPattern);
    for (const ok of ['', '0', '250', '9999999']) assert.ok(pattern.test(ok), ok);
    for (const bad of ['00', '-5', '12.5', '10000000', '$250']) assert.ok(!pattern.test(bad), bad);
  });

  test('a monthly cost budget of that amount, alerting the topic at 80% spent and at a forecast over 100%', () => {
    const d = deployedWith(s, { MonthlyBudgetUsd: '250' });
    const [id, b] = one(d, 'AWS::Budgets::Budget');
    const budget = b.Properties.Budget;
    assert.deepEqual(budget.BudgetLimit, { Amount: { Ref: 'MonthlyBudgetUsd' }, Unit: 'USD' });
    assert.deepEqual([budget.BudgetType, budget.TimeUnit], ['COST', 'MONTHLY']);
    assert.deepEqual(budget.BudgetName, { 'Fn::Join': ['', ['lablink-', { Ref: 'Environment' }, '-monthly']] });
    const notes = b.Properties.NotificationsWithSubscribers.map((n: Json) => [
      n.Notification.NotificationType,
      n.Notification.ComparisonOperator,
      n.Notification.Threshold,
      n.Notification.ThresholdType,
      n.Subscribers,
    ]);
    const toTopic = [{ SubscriptionType: 'SNS', Address: { Ref: topicId } }];
    assert.deepEqual(notes, [
      ['ACTUAL', 'GREATER_THAN', 80, 'PERCENTAGE', toTopic],
      ['FORECASTED', 'GREATER_THAN', 100, 'PERCENTAGE', toTopic],
    ]);
    // Created after the topic's policy lets Budgets publish.
    const [policyId] = one(s, 'AWS::SNS::TopicPolicy');
    assert.ok([s.resources[id].DependsOn].flat().includes(policyId));
  });
});

describe('custom domain', () => {
  const TYPES = [
    'AWS::CertificateManager::Certificate',
    'AWS::ApiGatewayV2::DomainName',
    'AWS::ApiGatewayV2::ApiMapping',
    'AWS::Route53::RecordSet',
  ];
  const withDomain = { DomainName: 'lablink.example.org', HostedZoneId: 'Z0123456789ABCDEFGHIJ' };

  test('without DomainName: no certificate, domain, mapping or record; the API and the VMs use the execute-api URL', () => {
    const d = deployedWith(s);
    for (const t of TYPES) assert.deepEqual(ofType(d, t), [], t);
    const url = d.json.Outputs.ApiUrl.Value;
    assert.ok(JSON.stringify(url).includes('execute-api'), JSON.stringify(url));
    assert.deepEqual(envOf(d, provisionerName).LABLINK_API_URL, url);
  });

  test('with DomainName: a DNS-validated certificate, a regional TLS 1.2 domain mapped to the stage, alias A and AAAA records', () => {
    const d = deployedWith(s, withDomain);
    const [certId, cert] = one(d, 'AWS::CertificateManager::Certificate');
    assert.deepEqual(cert.Properties.DomainName, { Ref: 'DomainName' });
    assert.equal(cert.Properties.ValidationMethod, 'DNS');
    assert.deepEqual(cert.Properties.DomainValidationOptions, [{ DomainName: { Ref: 'DomainName' }, HostedZoneId: { Ref: 'HostedZoneId' } }]);
    const [domainId, domain] = one(d, 'AWS::ApiGatewayV2::DomainName');
    assert.deepEqual(domain.Properties.DomainName, { Ref: 'DomainName' });
    assert.deepEqual(domain.Properties.DomainNameConfigurations, [
      { CertificateArn: { Ref: certId }, EndpointType: 'REGIONAL', SecurityPolicy: 'TLS_1_2', IpAddressType: 'dualstack' },
    ]);
    const [, mapping] = one(d, 'AWS::ApiGatewayV2::ApiMapping');
    assert.deepEqual(mapping.Properties, { ApiId: { Ref: apiId }, DomainName: { Ref: domainId }, Stage: { Ref: stageId } });
    const records = ofType(d, 'AWS::Route53::RecordSet').map(([, r]) => r.Properties);
    assert.deepEqual(records.map((r) => r.Type).sort(), ['A', 'AAAA']);
    for (const r of records) {
      assert.deepEqual(r.HostedZoneId, { Ref: 'HostedZoneId' });
      assert.deepEqual(r.Name, { Ref: 'DomainName' });
      assert.deepEqual(r.AliasTarget, {
        DNSName: { 'Fn::GetAtt': [domainId, 'RegionalDomainName'] },
        HostedZoneId: { 'Fn::GetAtt': [domainId, 'RegionalHostedZoneId'] },
        EvaluateTargetHealth: false,
      });
    }
  });

  test('with DomainName: ApiUrl, the holder routes\' URLs and the VMs\' LABLINK_API_URL are https://<DomainName>/', () => {
    const d = deployedWith(s, withDomain);
    const url = { 'Fn::Join': ['', ['https://', { Ref: 'DomainName' }, '/']] };
    assert.deepEqual(d.json.Outputs.ApiUrl.Value, url);
    assert.deepEqual(envOf(d, provisionerName).LABLINK_API_URL, url);
    assert.deepEqual(d.json.Outputs.VmStartupUrl.Value, { 'Fn::Join': ['', [url, 'vm_startup']] });
  });

  test('DomainName and HostedZoneId go together: one without the other is refused before anything is created', () => {
    assert.deepEqual(brokenRules(s), []);
    assert.deepEqual(brokenRules(s, withDomain), []);
    const halves: Record<string, string>[] = [{ DomainName: 'lablink.example.org' }, { HostedZoneId: 'Z0123456789ABCDEFGHIJ' }];
    for (const half of halves) {
      assert.equal(brokenRules(s, half).length, 1, JSON.stringify(half));
    }
    const name = new RegExp(s.json.Parameters.DomainName.AllowedPattern);
    for (const ok of ['', 'lablink.example.org', 'a-b.c.example.co.uk']) assert.ok(name.test(ok), ok);
    for (const bad of ['https://lablink.example.org', 'Lablink.Example.org', 'lablink', '-a.example.org', 'a.example.org/']) {
      assert.ok(!name.test(bad), bad);
    }
  });
});
