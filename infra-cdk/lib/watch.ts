// What watches a deployment while it runs (docs/operations.md, "Alarms"): one SNS topic
// (with the admin's email when `AlarmEmail` is set), the alarms, a dashboard, and an AWS
// Budgets alert when `MonthlyBudgetUsd` is set. Everything is created in the stack's own
// scope so logical ids stay short and stable; parameters and conditions come from the
// stack (a SAM-deployed template decides at deploy time, not at synth time).
//
// The alarms read AWS's own metrics where AWS has one (the failure queue, the holder's
// target group, the API) and, where it has none, metric filters on the JSON lines our
// code writes with a stable `event` field (tracing's JSON puts it at `$.fields.event`):
// - `job_failed`: the provisioner ended a job as failed (shared/provision);
// - `vm_states`: the holder's count, every minute, of VMs in `error` and of VMs still
//   `initializing` past BootstrapDeadlineMinutes (holder/src/lib.rs);
// - `export_upload_not_aborted`: an export's multipart upload could not be aborted, so
//   its parts stay in the export bucket until the lifecycle rule removes them
//   (shared/export). S3 has no metric for incomplete multipart uploads short of Storage
//   Lens; the bucket's rule aborts every one after a day whatever happens.
// Nothing here is a secret: alarm and budget messages carry names and numbers only, so
// the topic uses no KMS key (CloudWatch and Budgets could not publish to one under the
// AWS managed key anyway).

import { Aws, CfnCondition, Duration, Fn, Stack, Token } from 'aws-cdk-lib';
import * as apigwv2 from 'aws-cdk-lib/aws-apigatewayv2';
import * as budgets from 'aws-cdk-lib/aws-budgets';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import { SnsAction } from 'aws-cdk-lib/aws-cloudwatch-actions';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as rds from 'aws-cdk-lib/aws-rds';
import * as sns from 'aws-cdk-lib/aws-sns';
import * as sqs from 'aws-cdk-lib/aws-sqs';

/** The `event` values our code logs for the metric filters (grep the Rust for them). */
export const LOG_EVENTS = {
  jobFailed: 'job_failed',
  vmStates: 'vm_states',
  exportUploadNotAborted: 'export_upload_not_aborted',
} as const;

/** Percent of API requests answered 5xx (in 5 minutes, with at least API_5XX_MIN_REQUESTS) that alarms. */
export const API_5XX_PERCENT = 5;
export const API_5XX_MIN_REQUESTS = 20;
/** Budget alerts: actual spend past this share of the amount, and a forecast past all of it. */
export const BUDGET_ACTUAL_PERCENT = 80;
export const BUDGET_FORECAST_PERCENT = 100;

export interface WatchProps {
  readonly environment: string;
  readonly alarmEmail: string;
  readonly alarmEmailSet: CfnCondition;
  readonly monthlyBudgetUsd: string;
  readonly budgetSet: CfnCondition;
  readonly api: apigwv2.HttpApi;
  readonly provisioner: lambda.Function;
  readonly provisionerLogs: logs.ILogGroup;
  readonly provisionerFailures: sqs.Queue;
  readonly holderLogs: logs.ILogGroup;
  readonly holderTargets: elbv2.ApplicationTargetGroup;
  /** The holder service's desired task count: fewer healthy than this for 5 minutes alarms. */
  readonly holderTasks: number;
  /**
   * True between workshops: no holder task runs and every route answers 503 on purpose,
   * so the holder and 5xx alarms must not fire (docs/operations.md, "While paused").
   */
  readonly paused: CfnCondition;
  readonly database: rds.DatabaseInstance;
  readonly functions: readonly lambda.Function[];
}

export function addWatching(stack: Stack, p: WatchProps): sns.Topic {
  const topic = new sns.Topic(stack, 'AlarmTopic', {
    displayName: Fn.join('', ['LabLink ', p.environment, ' alarms']),
  });
  // The topic's policy replaces SNS's default one: the services that publish to it, each
  // only for this account.
  topic.addToResourcePolicy(
    new iam.PolicyStatement({
      sid: 'CloudWatchAlarms',
      principals: [new iam.ServicePrincipal('cloudwatch.amazonaws.com')],
      actions: ['sns:Publish'],
      resources: [topic.topicArn],
      conditions: {
        StringEquals: { 'aws:SourceAccount': Aws.ACCOUNT_ID },
        ArnLike: { 'aws:SourceArn': Fn.join('', ['arn:', Aws.PARTITION, ':cloudwatch:', Aws.REGION, ':', Aws.ACCOUNT_ID, ':alarm:*']) },
      },
    }),
  );
  topic.addToResourcePolicy(
    new iam.PolicyStatement({
      sid: 'Budgets',
      principals: [new iam.ServicePrincipal('budgets.amazonaws.com')],
      actions: ['sns:Publish'],
      resources: [topic.topicArn],
      conditions: {
        StringEquals: { 'aws:SourceAccount': Aws.ACCOUNT_ID },
        ArnLike: { 'aws:SourceArn': Fn.join('', ['arn:', Aws.PARTITION, ':budgets::', Aws.ACCOUNT_ID, ':*']) },
      },
    }),
  );
  // The admin confirms the subscription from the first email SNS sends.
  const email = new sns.CfnSubscription(stack, 'AlarmEmailSubscription', {
    topicArn: topic.topicArn,
    protocol: 'email',
    endpoint: p.alarmEmail,
  });
  email.cfnOptions.condition = p.alarmEmailSet;

  // Our own metrics, per deployment.
  const namespace = Fn.join('/', ['LabLink', p.environment]);
  const fromLog = (
    id: string,
    logGroup: logs.ILogGroup,
    event: string,
    metricName: string,
    metricValue: string,
  ): cloudwatch.Metric =>
    new logs.MetricFilter(stack, id, {
      logGroup,
      filterPattern: logs.FilterPattern.stringValue('$.fields.event', '=', event),
      metricNamespace: namespace,
      metricName,
      metricValue,
    }).metric();

  const jobsFailed = fromLog('JobsFailedFilter', p.provisionerLogs, LOG_EVENTS.jobFailed, 'JobsFailed', '1').with({
    statistic: 'Sum',
    period: Duration.minutes(5),
  });
  const vmsInError = fromLog('VmsInErrorFilter', p.holderLogs, LOG_EVENTS.vmStates, 'VmsInError', '$.fields.in_error').with({
    statistic: 'Maximum',
    period: Duration.minutes(5),
  });
  const vmsOverdue = fromLog(
    'VmsInitializingOverdueFilter',
    p.holderLogs,
    LOG_EVENTS.vmStates,
    'VmsInitializingOverdue',
    '$.fields.initializing_overdue',
  ).with({ statistic: 'Maximum', period: Duration.minutes(5) });
  const uploadsLeft = fromLog(
    'ExportUploadsNotAbortedFilter',
    p.provisionerLogs,
    LOG_EVENTS.exportUploadNotAborted,
    'ExportUploadsNotAborted',
    '1',
  ).with({ statistic: 'Sum', period: Duration.minutes(5) });
  const deadLettered = p.provisionerFailures.metricApproximateNumberOfMessagesVisible({
    statistic: 'Maximum',
    period: Duration.minutes(5),
  });
  const healthyHolders = p.holderTargets.metrics.healthyHostCount({ statistic: 'Minimum', period: Duration.minutes(1) });
  const unhealthyHolders = p.holderTargets.metrics.unhealthyHostCount({ statistic: 'Maximum', period: Duration.minutes(1) });
  const requests = p.api.metricCount({ statistic: 'Sum', period: Duration.minutes(5) });
  const serverErrors = p.api.metricServerError({ statistic: 'Sum', period: Duration.minutes(5) });
  const api5xxRate = new cloudwatch.MathExpression({
    // Quiet periods (a handful of requests) never alarm on one unlucky answer.
    expression: `IF(requests >= ${API_5XX_MIN_REQUESTS}, 100 * errors / requests, 0)`,
    usingMetrics: { requests, errors: serverErrors },
    period: Duration.minutes(5),
    label: 'API 5xx (% of requests)',
  });

  const action = new SnsAction(topic);
  const alarm = (
    id: string,
    description: string,
    metric: cloudwatch.IMetric,
    o: {
      threshold: number;
      comparison: cloudwatch.ComparisonOperator;
      periods: number;
      missing: cloudwatch.TreatMissingData;
    },
  ): cloudwatch.Alarm => {
    const a = new cloudwatch.Alarm(stack, id, {
      alarmName: Fn.join('', ['lablink-', p.environment, '-', id]),
      alarmDescription: `${description} (docs/operations.md, "Alarms")`,
      metric,
      threshold: o.threshold,
      comparisonOperator: o.comparison,
      evaluationPeriods: o.periods,
      datapointsToAlarm: o.periods,
      treatMissingData: o.missing,
    });
    a.addAlarmAction(action);
    a.addOkAction(action);
    return a;
  };
  const atLeast = cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD;
  const notBreaching = cloudwatch.TreatMissingData.NOT_BREACHING;
  const holderUnhealthy = alarm(
    'HolderUnhealthy',
    `Fewer than ${p.holderTasks} holder tasks healthy behind the load balancer for 5 minutes`,
    healthyHolders,
    {
      threshold: p.holderTasks,
      comparison: cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
      periods: 5,
      // No data from the load balancer is no healthy holder.
      missing: cloudwatch.TreatMissingData.BREACHING,
    },
  );
  // Paused: zero tasks is right. Fewer than 0 never holds, and missing data is fine.
  const ifPaused = (whenPaused: unknown, running: unknown): unknown => Fn.conditionIf(p.paused.logicalId, whenPaused, running);
  const holderAlarm = holderUnhealthy.node.defaultChild as cloudwatch.CfnAlarm;
  holderAlarm.addPropertyOverride('Threshold', ifPaused(0, p.holderTasks));
  holderAlarm.addPropertyOverride('TreatMissingData', ifPaused('notBreaching', 'breaching'));
  const api5xx = alarm(
    'Api5xxRate',
    `More than ${API_5XX_PERCENT}% of API requests answered 5xx in 5 minutes`,
    api5xxRate,
    { threshold: API_5XX_PERCENT, comparison: cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD, periods: 1, missing: notBreaching },
  );
  // Paused: every answer is a 503 on purpose; the alarm still shows its state, but notifies no one.
  (api5xx.node.defaultChild as cloudwatch.CfnAlarm).addPropertyOverride('ActionsEnabled', ifPaused(false, true));
  const alarms = [
    alarm('JobsFailed', 'A launch, destroy, replace or export job failed', jobsFailed, {
      threshold: 1,
      comparison: atLeast,
      periods: 1,
      missing: notBreaching,
    }),
    alarm(
      'JobsDeadLettered',
      "A jobs-table stream batch failed every retry and went to the provisioner's failure queue",
      deadLettered,
      { threshold: 1, comparison: atLeast, periods: 1, missing: notBreaching },
    ),
    holderUnhealthy,
    api5xx,
    alarm('VmsInError', 'At least one VM is in error', vmsInError, {
      threshold: 1,
      comparison: atLeast,
      periods: 1,
      missing: notBreaching,
    }),
    alarm(
      'VmsStuckInitializing',
      'A VM has been initializing longer than BootstrapDeadlineMinutes after launch, for 10 minutes',
      vmsOverdue,
      { threshold: 1, comparison: atLeast, periods: 2, missing: notBreaching },
    ),
    alarm(
      'ExportUploadsLeftOver',
      "An export's multipart upload could not be aborted: its parts stay in the export bucket (billed) until the lifecycle rule removes them after a day",
      uploadsLeft,
      { threshold: 1, comparison: atLeast, periods: 1, missing: notBreaching },
    ),
  ];

  const budget = new budgets.CfnBudget(stack, 'MonthlyBudget', {
    budget: {
      budgetName: Fn.join('', ['lablink-', p.environment, '-monthly']),
      budgetType: 'COST',
      timeUnit: 'MONTHLY',
      budgetLimit: { amount: Token.asNumber(p.monthlyBudgetUsd), unit: 'USD' },
    },
    notificationsWithSubscribers: [
      { comparisonOperator: 'GREATER_THAN', notificationType: 'ACTUAL', threshold: BUDGET_ACTUAL_PERCENT },
      { comparisonOperator: 'GREATER_THAN', notificationType: 'FORECASTED', threshold: BUDGET_FORECAST_PERCENT },
    ].map((n) => ({
      notification: { ...n, thresholdType: 'PERCENTAGE' },
      subscribers: [{ subscriptionType: 'SNS', address: topic.topicArn }],
    })),
  });
  budget.cfnOptions.condition = p.budgetSet;
  // Budgets publishes only once the topic's policy allows it.
  budget.node.addDependency(topic.node.findChild('Policy'));

  const lambdaErrors = p.functions.map((f) => f.metricErrors({ statistic: 'Sum', period: Duration.minutes(5) }));
  const lambdaThrottles = p.functions.map((f) => f.metricThrottles({ statistic: 'Sum', period: Duration.minutes(5) }));
  const sum = (id: string, label: string, metrics: cloudwatch.IMetric[]): cloudwatch.MathExpression =>
    new cloudwatch.MathExpression({
      expression: metrics.map((_, i) => `${id}${i}`).join(' + '),
      usingMetrics: Object.fromEntries(metrics.map((m, i) => [`${id}${i}`, m])),
      period: Duration.minutes(5),
      label,
    });
  const dashboard = new cloudwatch.Dashboard(stack, 'Dashboard', {
    dashboardName: Fn.join('', ['lablink-', p.environment]),
    defaultInterval: Duration.hours(6),
  });
  const graph = (title: string, left: cloudwatch.IMetric[], right: cloudwatch.IMetric[] = []): cloudwatch.GraphWidget =>
    new cloudwatch.GraphWidget({ title, left, right, width: 8, height: 6 });
  dashboard.addWidgets(new cloudwatch.AlarmStatusWidget({ title: 'Alarms', alarms, width: 24, height: 3 }));
  dashboard.addWidgets(
    graph('API requests and 5xx', [requests, serverErrors], [api5xxRate]),
    graph('Holder tasks (healthy, unhealthy)', [healthyHolders, unhealthyHolders]),
    graph('VMs in error, initializing overdue', [vmsInError, vmsOverdue]),
  );
  dashboard.addWidgets(
    graph('Jobs failed, dead-lettered', [jobsFailed, deadLettered]),
    graph('Functions: errors, throttles (all)', [sum('e', 'errors', lambdaErrors), sum('t', 'throttles', lambdaThrottles)]),
    graph('Database CPU %, connections', [p.database.metricCPUUtilization()], [p.database.metricDatabaseConnections()]),
  );
  dashboard.addWidgets(
    graph('Provisioner duration (ms), export uploads left over', [p.provisioner.metricDuration({ statistic: 'Maximum' })], [uploadsLeft]),
  );
  return topic;
}
