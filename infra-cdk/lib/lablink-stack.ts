// LabLink's AWS infrastructure as one CloudFormation stack (deployed with SAM, see
// docs/deploy.md). It owns the network, the database, the holder service, the jobs table,
// the VM log group, the export bucket, the API and every function with its permissions.
// Routes, functions and their permissions come from functions/manifest.json, never from a
// list kept here.
//
// Rules it keeps (issue 9, ../../docs/architecture.md):
// - each function gets its own role with only what its manifest entry says it needs;
// - only the provisioner may run or terminate instances, and only instances tagged with
//   this deployment; no wildcard actions on EC2 or DynamoDB;
// - secrets live in Secrets Manager; environment variables carry only their ARNs;
// - nothing accepts SSH, and nothing inside the VPC is reachable from the internet except
//   through API Gateway;
// - the export bucket is private: only functions whose manifest entry has `export_bucket`
//   may touch it (and only under exports/); VMs and the holder never get a permission on
//   it: VMs upload and admins download through presigned URLs;
// - the client daemon ships with the deployment as one S3 object: VMs may read that object
//   and nothing else in its bucket, and the provisioner tells them its SHA-256;
// - it is watched (./watch.ts): JSON logs from every function, alarms to one SNS topic, a
//   dashboard, an optional budget; an optional custom domain gives the API a stable
//   address, which the VMs and the outputs then use.

import {
  ArnFormat,
  Aws,
  CfnCondition,
  CfnOutput,
  CfnParameter,
  CfnResource,
  CfnRule,
  Duration,
  Fn,
  RemovalPolicy,
  Stack,
  StackProps,
  Tags,
} from 'aws-cdk-lib';
import * as apigwv2 from 'aws-cdk-lib/aws-apigatewayv2';
import * as acm from 'aws-cdk-lib/aws-certificatemanager';
import { HttpAlbIntegration, HttpLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as ec2 from 'aws-cdk-lib/aws-ec2';
import * as ecr from 'aws-cdk-lib/aws-ecr';
import * as ecs from 'aws-cdk-lib/aws-ecs';
import * as elbv2 from 'aws-cdk-lib/aws-elasticloadbalancingv2';
import * as events from 'aws-cdk-lib/aws-events';
import * as eventsTargets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { DynamoEventSource, SqsDlq } from 'aws-cdk-lib/aws-lambda-event-sources';
import * as logs from 'aws-cdk-lib/aws-logs';
import { LambdaDestination } from 'aws-cdk-lib/aws-logs-destinations';
import * as rds from 'aws-cdk-lib/aws-rds';
import * as route53 from 'aws-cdk-lib/aws-route53';
import * as s3 from 'aws-cdk-lib/aws-s3';
import * as s3assets from 'aws-cdk-lib/aws-s3-assets';
import * as scheduler from 'aws-cdk-lib/aws-scheduler';
import * as secretsmanager from 'aws-cdk-lib/aws-secretsmanager';
import * as sqs from 'aws-cdk-lib/aws-sqs';
import { Construct } from 'constructs';
import { DaemonBinary, LambdaCodeSource } from './lambda-code';
import { DbUser, EventFunction, ExportBucketAccess, HOLDER_ROUTE_PATHS, HttpFunction, Manifest, pascal } from './manifest';
import { addWatching } from './watch';

/** The tag every VM of a deployment carries; IAM conditions on it fence the provisioner. */
export const DEPLOYMENT_TAG = 'lablink:deployment';
/**
 * The database user the holder logs in as, with an IAM token (`rds_iam`); each function's
 * comes from its manifest entry (`db_user`). The holder image's `setup-db` creates them.
 */
export const HOLDER_DB_USER: DbUser = 'lablink_app';
export const DB_NAME = 'lablink';
/** What a jobs-table function may do to the table (the job store's calls), nothing more. */
export const JOBS_TABLE_ACTIONS = [
  'dynamodb:GetItem',
  'dynamodb:PutItem',
  'dynamodb:UpdateItem',
  'dynamodb:DeleteItem',
  'dynamodb:Query',
  'dynamodb:ConditionCheckItem',
];
/** Tags the provisioner may set on its own instances after launch (their hostnames). */
export const VM_NAME_TAGS = ['lablink:hostname', 'Name'];
/** Where the Rust code keeps exports: exports/<job-id>/vms/<hostname>.tar, exports/<job-id>/lablink_data<timestamp>.zip. */
export const EXPORT_PREFIX = 'exports/';
/** What each manifest `export_bucket` value allows on the export bucket's objects (under EXPORT_PREFIX). */
export const EXPORT_BUCKET_ACTIONS: Readonly<Record<Exclude<ExportBucketAccess, 'none'>, readonly string[]>> = {
  // Presigning a GET of the assembled zip.
  read: ['s3:GetObject'],
  // Presigning the VMs' PUTs, reading their archives, writing the zip with a multipart
  // upload (Create/UploadPart/Complete are s3:PutObject) and cleaning up a failed one.
  readwrite: ['s3:GetObject', 's3:PutObject', 's3:AbortMultipartUpload', 's3:ListMultipartUploadParts'],
};
/** The holder's container port and health check; how many tasks run it. */
export const HOLDER_PORT = 8080;
export const HOLDER_TASKS = 2;
export const HOLDER_HEALTH_PATH = '/healthz';
/** The VM image when `AmiId` is empty: AWS's current GPU base image, resolved at launch. */
export const DEFAULT_AMI_SSM_PARAMETER =
  '/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-24.04/latest/ami-id';
/** The AWS managed policy a VM gets when `EnableSessionManager` is true. */
export const SESSION_MANAGER_POLICY = 'AmazonSSMManagedInstanceCore';
/**
 * Longest `StartupScriptB64` (1050 bytes of script). It travels in the provisioner's
 * environment, and Lambda allows 4 KB for all of a function's variables together: this is
 * about what is left with every other value at its longest (test/stack.test.ts checks the
 * sum). A multiple of 4, as base64 is. (A CloudFormation parameter holds at most 4096
 * characters in any case.)
 */
export const STARTUP_SCRIPT_B64_MAX = 1400;
/** Longest `DomainName`: it becomes the provisioner's LABLINK_API_URL (the same 4 KB). */
export const DOMAIN_NAME_MAX = 128;
/**
 * The database functions' PGHOST while the deployment is paused (the proxy is gone): a
 * name that never resolves (RFC 2606), so nothing can reach a database by accident. A
 * paused function answers 503 before it would connect (lablink_web::routes).
 */
export const PAUSED_DB_HOST = 'paused.invalid';
/**
 * How often, while paused, a schedule stops the database again: RDS starts a stopped
 * instance by itself after 7 days, and each hour it then runs costs an instance-hour.
 * Hourly caps that at about an hour a week for a few cents of Scheduler invocations
 * (free tier), where daily would let it run up to a day each week.
 */
export const KEEP_DB_STOPPED_RATE = 'rate(1 hour)';
/** The paused-state schedule's name (scripts/lablink_pause.py disables it on resume). */
export const keepDatabaseStoppedName = (environment: string): string =>
  Fn.join('', ['lablink-', environment, '-keep-database-stopped']);

export interface LabLinkStackProps extends StackProps {
  readonly manifest: Manifest;
  readonly code: LambdaCodeSource;
  /** The client daemon binary the VMs download (lambda-code.ts chooses it). */
  readonly daemon: DaemonBinary;
  readonly architecture: lambda.Architecture;
  /** Reserved concurrency of each participant route (a class-start burst is throttled with 429). */
  readonly participantConcurrency: number;
  /** The holder's longest hold window; API Gateway cuts at 29 s, so 27 by default. */
  readonly holderMaxWaitSeconds: number;
  readonly natGateways: number;
  readonly dbInstanceType: string;
  readonly dbMultiAz: boolean;
}

export class LabLinkStack extends Stack {
  constructor(scope: Construct, id: string, props: LabLinkStackProps) {
    super(scope, id, props);

    // ---- Parameters (the ones an admin sets with `sam deploy --parameter-overrides`) ----
    const environment = new CfnParameter(this, 'Environment', {
      type: 'String',
      default: 'prod',
      allowedPattern: '^[a-z][a-z0-9-]{0,19}$',
      maxLength: 20,
      description: 'Name of this deployment (lower case); VMs are tagged lablink:deployment=<it>.',
    }).valueAsString;
    const adminUser = new CfnParameter(this, 'AdminUser', {
      type: 'String',
      default: 'admin',
      allowedPattern: '^[A-Za-z0-9._@-]{1,64}$',
      description: 'User name of the admin console.',
    }).valueAsString;
    const adminPasswordHash = new CfnParameter(this, 'AdminPasswordHash', {
      type: 'String',
      noEcho: true,
      allowedPattern: '^\\$argon2(id|i|d)\\$[A-Za-z0-9$=,+/.-]+$',
      constraintDescription: 'an argon2 PHC string from `cargo run -p lablink-local -- hash-password`',
      description: 'Argon2 hash of the admin password (PHC string); stored in Secrets Manager only.',
    }).valueAsString;
    const machineType = new CfnParameter(this, 'MachineType', {
      type: 'String',
      default: 'g4dn.xlarge',
      allowedPattern: '^[a-z0-9-]+\\.[a-z0-9]+$',
      maxLength: 32,
      description: 'EC2 instance type of the VMs.',
    }).valueAsString;
    const amiId = new CfnParameter(this, 'AmiId', {
      type: 'String',
      default: '',
      allowedPattern: '^(ami-[0-9a-f]{8}([0-9a-f]{9})?)?$',
      maxLength: 21,
      constraintDescription: 'empty, or an AMI id like ami-0123456789abcdef0',
      description:
        "Override of the VMs' image. Empty: AWS's current Deep Learning Base OSS Nvidia Driver GPU AMI " +
        'for Ubuntu 24.04, resolved by the provisioner from the public SSM parameter AmiSsmParameter at launch.',
    }).valueAsString;
    const amiSsmParameter = new CfnParameter(this, 'AmiSsmParameter', {
      type: 'String',
      default: DEFAULT_AMI_SSM_PARAMETER,
      // Public parameters only: the provisioner may read nothing else.
      allowedPattern: '^/aws/service/[A-Za-z0-9_./-]+$',
      maxLength: 128,
      constraintDescription: 'a public SSM parameter under /aws/service/ that holds an AMI id',
      description: 'Public SSM parameter holding the VM image when AmiId is empty (read at every launch).',
    }).valueAsString;
    const maxVms = new CfnParameter(this, 'MaxVms', {
      type: 'Number',
      default: 60,
      minValue: 1,
      maxValue: 1000,
      description: 'Most VMs one deployment may run.',
    }).valueAsString;
    const allowedCidrs = new CfnParameter(this, 'AllowedCidrs', {
      type: 'CommaDelimitedList',
      default: '0.0.0.0/0,::/0',
      description: 'CIDRs allowed to use the admin console and admin API (comma separated).',
    }).valueAsList;
    // Who may take a seat: the defaults until the admin saves other values on the dashboard.
    const workshopAccessCode = new CfnParameter(this, 'WorkshopAccessCode', {
      type: 'String',
      default: '',
      noEcho: true,
      maxLength: 128,
      description: 'Access code participants must type on the form (empty: none). The dashboard can change it.',
    }).valueAsString;
    const workshopParticipants = new CfnParameter(this, 'WorkshopParticipants', {
      type: 'String',
      default: '',
      maxLength: 4096,
      description:
        'Allowed participants: emails and @domains separated by spaces or commas (empty: anyone). ' +
        'Longer lists: paste or upload them on the dashboard.',
    }).valueAsString;
    const seatsPerAddress = new CfnParameter(this, 'SeatsPerAddress', {
      type: 'Number',
      default: 100,
      minValue: 1,
      maxValue: 100000,
      description: 'New seats one network address may take per SeatsWindowMinutes (a class behind one NAT fits).',
    }).valueAsString;
    const seatsWindowMinutes = new CfnParameter(this, 'SeatsWindowMinutes', {
      type: 'Number',
      default: 10,
      minValue: 1,
      maxValue: 1440,
      description: 'The window of SeatsPerAddress, in minutes.',
    }).valueAsString;
    const fleetHours = new CfnParameter(this, 'FleetHours', {
      type: 'Number',
      default: 12,
      minValue: 1,
      maxValue: 168,
      description: 'A launched fleet is destroyed this many hours later unless the launch or the admin says otherwise.',
    }).valueAsString;
    const holderImageTag = new CfnParameter(this, 'HolderImageTag', {
      type: 'String',
      default: 'latest',
      allowedPattern: '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$',
      description: 'Tag of the holder image in the ECR repository lablink-holder-<Environment>.',
    }).valueAsString;
    // ---- The workshop: what every VM runs (passed to the provisioner, which writes user data) ----
    // No default, and only a digest: a tag can be moved under a deployment (the classic
    // project's linux-amd64-latest lost Chrome Remote Desktop on 2026-05-14), and a default
    // could only name a tag. A release's pin is its client-image.txt, which
    // `scripts/deploy --release` sets (docs/deploy.md, "Client image").
    const clientImage = new CfnParameter(this, 'ClientImage', {
      type: 'String',
      allowedPattern: '^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$',
      maxLength: 255,
      constraintDescription:
        "an image pinned by digest, e.g. ghcr.io/org/lablink-client@sha256:<64 hex> (a release's client-image.txt)",
      description:
        "Container image of the participants' workspace on every VM, pinned by digest (this project's client image: a release's client-image.txt, or scripts/build-client-image --push).",
    }).valueAsString;
    const tutorialRepo = new CfnParameter(this, 'TutorialRepo', {
      type: 'String',
      default: '',
      allowedPattern: '^((https|git)://[^\\s]+)?$',
      maxLength: 255,
      constraintDescription: 'empty, or an https:// or git:// URL without spaces',
      description: "Optional git repository cloned into the participant's home on every VM.",
    }).valueAsString;
    const subjectSoftware = new CfnParameter(this, 'SubjectSoftware', {
      type: 'String',
      default: 'sleap',
      allowedPattern: '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$',
      maxLength: 64,
      constraintDescription: 'a program name: letters, digits, dot, underscore, dash (at most 64)',
      description: 'The workshop software whose activity the VMs report.',
    }).valueAsString;
    const startupScriptB64 = new CfnParameter(this, 'StartupScriptB64', {
      type: 'String',
      default: '',
      allowedPattern: '^[A-Za-z0-9+/=]*$',
      maxLength: STARTUP_SCRIPT_B64_MAX,
      constraintDescription: `base64 (no line breaks), at most ${STARTUP_SCRIPT_B64_MAX} characters`,
      description:
        "Optional: base64 of the admin's startup script, run in every workspace before the participant " +
        `arrives (at most ${STARTUP_SCRIPT_B64_MAX} characters: it travels in a Lambda environment variable).`,
    }).valueAsString;
    const startupOnError = new CfnParameter(this, 'StartupOnError', {
      type: 'String',
      default: 'continue',
      allowedValues: ['continue', 'fail'],
      description: 'When the startup script fails: continue (the VM is still handed out) or fail (it is not).',
    }).valueAsString;
    const desktopUser = new CfnParameter(this, 'DesktopUser', {
      type: 'String',
      default: 'client',
      allowedPattern: '^[a-z_][a-z0-9_-]{0,31}$',
      maxLength: 32,
      constraintDescription: 'a Linux user name: lower case, digits, underscore, dash; at most 32',
      description: "The participant's user in the workspace (the client image must have it).",
    }).valueAsString;
    const vmDiskGb = new CfnParameter(this, 'VmDiskGb', {
      type: 'Number',
      default: 100,
      minValue: 30,
      maxValue: 2000,
      description: "Size (GiB) of each VM's root volume.",
    }).valueAsString;
    const bootstrapDeadlineMinutes = new CfnParameter(this, 'BootstrapDeadlineMinutes', {
      type: 'Number',
      default: 20,
      minValue: 5,
      maxValue: 120,
      description: 'Minutes a VM has from launch to report ready before the holder gives up on it.',
    }).valueAsString;
    const enableSessionManager = new CfnParameter(this, 'EnableSessionManager', {
      type: 'String',
      default: 'false',
      allowedValues: ['true', 'false'],
      description: `Give the VMs ${SESSION_MANAGER_POLICY}, so admins can open a Session Manager shell (off by default).`,
    }).valueAsString;
    const deletionProtection = new CfnParameter(this, 'DatabaseDeletionProtection', {
      type: 'String',
      default: 'true',
      allowedValues: ['true', 'false'],
      description: 'Protect the database from deletion (turn off before tearing the stack down).',
    }).valueAsString;
    const exportRetention = new CfnParameter(this, 'ExportRetentionDays', {
      type: 'Number',
      default: 7,
      minValue: 1,
      maxValue: 365,
      description: 'Days a data export (per-VM archives and the assembled zip) stays in the export bucket.',
    });
    const exportExtensions = new CfnParameter(this, 'ExportExtensions', {
      type: 'String',
      default: 'slp',
      allowedPattern: '^[A-Za-z0-9_-]{1,16}(,[A-Za-z0-9_-]{1,16})*$',
      // Bounded, as everything in the provisioner's environment is (STARTUP_SCRIPT_B64_MAX).
      maxLength: 128,
      constraintDescription: 'comma-separated file extensions without dots, e.g. slp or slp,h5',
      description: 'File extensions a data export collects from the VMs (comma separated, no dots).',
    }).valueAsString;
    const exportMaxFileMb = new CfnParameter(this, 'ExportMaxFileMb', {
      type: 'Number',
      default: 2048,
      minValue: 1,
      // A presigned PUT is one request: S3 takes at most 5 GiB in one.
      maxValue: 5120,
      description: 'Largest file (MiB) a VM adds to a data export; larger files are skipped.',
    }).valueAsString;
    const exportWaitSeconds = new CfnParameter(this, 'ExportWaitSeconds', {
      type: 'Number',
      default: 300,
      minValue: 10,
      // Well inside the provisioner's 15-minute timeout (14-minute attempt lease).
      maxValue: 600,
      description: 'How long a data export waits for the VMs to upload their archives.',
    }).valueAsString;

    // ---- Watching and a stable address (all optional) ----
    const alarmEmail = new CfnParameter(this, 'AlarmEmail', {
      type: 'String',
      default: '',
      allowedPattern: '^([^\\s@]+@[^\\s@]+\\.[^\\s@]+)?$',
      maxLength: 254,
      constraintDescription: 'empty, or one email address',
      description: "Email address subscribed to the deployment's alarm topic (empty: none; confirm the first email SNS sends).",
    }).valueAsString;
    const monthlyBudgetUsd = new CfnParameter(this, 'MonthlyBudgetUsd', {
      type: 'String',
      default: '0',
      allowedPattern: '^(|0|[1-9][0-9]{0,6})$',
      maxLength: 7,
      constraintDescription: 'whole US dollars; 0 or empty for no budget',
      description:
        "Monthly cost (USD) of the AWS account at which AWS Budgets alerts the alarm topic (at 80% spent and at a forecast over 100%); 0 or empty: no budget.",
    }).valueAsString;
    const domainName = new CfnParameter(this, 'DomainName', {
      type: 'String',
      default: '',
      allowedPattern: '^(([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\\.)+[a-z]{2,63})?$',
      // Bounded, as everything in the provisioner's environment is (STARTUP_SCRIPT_B64_MAX).
      maxLength: DOMAIN_NAME_MAX,
      constraintDescription: `empty, or a lower-case DNS name of at most ${DOMAIN_NAME_MAX} characters, e.g. lablink.example.org`,
      description:
        'Optional stable address of the API (e.g. lablink.example.org), in the Route 53 hosted zone HostedZoneId: ' +
        'a certificate, an API Gateway custom domain and an alias record; participants, admins and VMs then use it.',
    }).valueAsString;
    const hostedZoneId = new CfnParameter(this, 'HostedZoneId', {
      type: 'String',
      default: '',
      allowedPattern: '^(Z[A-Z0-9]{1,31})?$',
      maxLength: 32,
      constraintDescription: 'empty, or a Route 53 hosted zone id like Z0123456789ABCDEFGHIJ',
      description: 'The Route 53 public hosted zone DomainName is in (required with DomainName).',
    }).valueAsString;
    // Between workshops (docs/deploy.md, "Between workshops: pause and resume"): set by
    // `scripts/deploy --pause` / `--resume`, which also stop and start the database.
    const paused = new CfnParameter(this, 'Paused', {
      type: 'String',
      default: 'false',
      allowedValues: ['true', 'false'],
      description:
        'true between workshops: no holder tasks, no NAT gateway, no database proxy, every route answers 503 ' +
        '(use scripts/deploy --pause / --resume, which also stop and start the database; data is kept).',
    }).valueAsString;

    // On every resource (a stack tag cannot hold a parameter's value).
    // CDK makes each function depend on its role's policy and on the role it also GetAtts;
    // the duplicate is how CDK orders a policy before its function (cfn-lint W3005).
    this.templateOptions.metadata = { 'cfn-lint': { config: { ignore_checks: ['W3005'] } } };

    Tags.of(this).add(DEPLOYMENT_TAG, environment, { excludeResourceTypes: ['aws:cdk:stack'] });

    const amiIdGiven = new CfnCondition(this, 'AmiIdGiven', {
      expression: Fn.conditionNot(Fn.conditionEquals(amiId, '')),
    });
    const sessionManagerEnabled = new CfnCondition(this, 'SessionManagerEnabled', {
      expression: Fn.conditionEquals(enableSessionManager, 'true'),
    });
    const alarmEmailSet = new CfnCondition(this, 'AlarmEmailSet', {
      expression: Fn.conditionNot(Fn.conditionEquals(alarmEmail, '')),
    });
    const budgetSet = new CfnCondition(this, 'BudgetSet', {
      expression: Fn.conditionAnd(
        Fn.conditionNot(Fn.conditionEquals(monthlyBudgetUsd, '')),
        Fn.conditionNot(Fn.conditionEquals(monthlyBudgetUsd, '0')),
      ),
    });
    const customDomain = new CfnCondition(this, 'CustomDomain', {
      expression: Fn.conditionNot(Fn.conditionEquals(domainName, '')),
    });
    const isPaused = new CfnCondition(this, 'IsPaused', { expression: Fn.conditionEquals(paused, 'true') });
    const notPaused = new CfnCondition(this, 'NotPaused', { expression: Fn.conditionNot(Fn.conditionEquals(paused, 'true')) });
    /** `whenPaused` while paused, else `running` (an `Fn::If` on IsPaused). */
    const ifPaused = <T>(whenPaused: T, running: T): T => Fn.conditionIf(isPaused.logicalId, whenPaused, running) as unknown as T;
    // A domain without its zone (or a zone without a domain) is refused before anything
    // is created: rules cannot use conditions, hence the expressions again.
    new CfnRule(this, 'DomainNameNeedsHostedZone', {
      assertions: [
        {
          assert: Fn.conditionOr(
            Fn.conditionAnd(Fn.conditionEquals(domainName, ''), Fn.conditionEquals(hostedZoneId, '')),
            Fn.conditionAnd(
              Fn.conditionNot(Fn.conditionEquals(domainName, '')),
              Fn.conditionNot(Fn.conditionEquals(hostedZoneId, '')),
            ),
          ),
          assertDescription: 'DomainName and HostedZoneId go together: set both, or neither.',
        },
      ],
    });

    // ---- Network: 2 AZs; public subnets for the VMs and NAT, private for everything else ----
    const vpc = new ec2.Vpc(this, 'Vpc', {
      maxAzs: 2,
      natGateways: props.natGateways,
      natGatewayProvider: new PausableNatGateways(),
      // The default security group is used by nothing here; restricting it would add a
      // custom-resource Lambda to the template.
      restrictDefaultSecurityGroup: false,
      subnetConfiguration: [
        { name: 'public', subnetType: ec2.SubnetType.PUBLIC, cidrMask: 22 },
        { name: 'private', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS, cidrMask: 22 },
        { name: 'database', subnetType: ec2.SubnetType.PRIVATE_ISOLATED, cidrMask: 24 },
      ],
      gatewayEndpoints: {
        DynamoDb: { service: ec2.GatewayVpcEndpointAwsService.DYNAMODB },
        S3: { service: ec2.GatewayVpcEndpointAwsService.S3 },
      },
    });
    const privateSubnets: ec2.SubnetSelection = { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS };
    // Paused: no NAT gateway, no Elastic IP, no default route to them. Nothing in the
    // private subnets needs the internet then (no holder task, and every function
    // answers 503 before it calls anything); DynamoDB and S3 stay reachable through the
    // gateway endpoints.
    const natParts = vpc.node
      .findAll()
      .filter(
        (c): c is CfnResource =>
          c instanceof ec2.CfnNatGateway ||
          c instanceof ec2.CfnEIP ||
          (c instanceof ec2.CfnRoute && c.natGatewayId !== undefined),
      );
    const nats = natParts.filter((c) => c instanceof ec2.CfnNatGateway).length;
    const natRoutes = natParts.filter((c): c is ec2.CfnRoute => c instanceof ec2.CfnRoute);
    if (nats !== props.natGateways || natRoutes.length !== vpc.privateSubnets.length) {
      throw new Error(
        `found ${nats} NAT gateways and ${natRoutes.length} routes to them: the Vpc construct changed its children`,
      );
    }
    for (const c of natParts) c.cfnOptions.condition = notPaused;

    const lambdaSg = new ec2.SecurityGroup(this, 'FunctionsSecurityGroup', {
      vpc,
      description: 'LabLink functions that use the database (no ingress)',
      allowAllOutbound: true,
    });
    const holderSg = new ec2.SecurityGroup(this, 'HolderSecurityGroup', {
      vpc,
      description: 'LabLink holder tasks (ingress from the internal load balancer only)',
      allowAllOutbound: true,
    });
    const vmSg = new ec2.SecurityGroup(this, 'VmSecurityGroup', {
      vpc,
      description: 'LabLink VMs: no ingress at all (Chrome Remote Desktop connects outbound)',
      allowAllOutbound: true,
    });

    // ---- Database: PostgreSQL 15, IAM auth, encrypted, backed up; a proxy for the Lambdas ----
    const engine = rds.DatabaseInstanceEngine.postgres({ version: rds.PostgresEngineVersion.VER_15 });
    const db = new rds.DatabaseInstance(this, 'Database', {
      engine,
      vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_ISOLATED },
      instanceType: new ec2.InstanceType(props.dbInstanceType),
      multiAz: props.dbMultiAz,
      databaseName: DB_NAME,
      // The master user only runs the setup (the holder task's db-setup container: roles,
      // migrations, grants); its generated password lives in Secrets Manager.
      credentials: rds.Credentials.fromGeneratedSecret('lablink_admin'),
      iamAuthentication: true,
      storageEncrypted: true,
      storageType: rds.StorageType.GP3,
      allocatedStorage: 20,
      maxAllocatedStorage: 200,
      backupRetention: Duration.days(7),
      deleteAutomatedBackups: false,
      removalPolicy: RemovalPolicy.SNAPSHOT,
      // Exported to /aws/rds/instance/<id>/postgresql (retention left to the admin: a
      // retention setting here would add a custom-resource Lambda).
      cloudwatchLogsExports: ['postgresql'],
      parameterGroup: new rds.ParameterGroup(this, 'DatabaseParameters', {
        engine,
        description: 'LabLink: TLS required',
        parameters: { 'rds.force_ssl': '1' },
      }),
      autoMinorVersionUpgrade: true,
    });
    const cfnDb = db.node.defaultChild as rds.CfnDBInstance;
    // A parameter, so an admin can turn it off with `sam deploy` before tearing down.
    cfnDb.addPropertyOverride('DeletionProtection', deletionProtection);
    // Major version "15" on purpose: RDS picks the newest 15.x and minor upgrades keep it
    // current; a pinned minor would make the deploy after an automatic upgrade try to
    // downgrade. cfn-lint lists a bare major as deprecated only because it is no release.
    cfnDb.cfnOptions.metadata = { 'cfn-lint': { config: { ignore_checks: ['W3691'] } } };
    db.connections.allowDefaultPortFrom(holderSg, 'holder: one LISTEN connection per task, straight to the instance');

    const proxyRole = new iam.Role(this, 'DatabaseProxyRole', {
      assumedBy: new iam.ServicePrincipal('rds.amazonaws.com'),
      description: 'RDS Proxy: end-to-end IAM authentication to the database',
    });
    const proxy = new rds.DatabaseProxy(this, 'DatabaseProxy', {
      // Proxy names are unique per account and region: one per deployment.
      dbProxyName: Fn.join('', ['lablink-', environment]),
      proxyTarget: rds.ProxyTarget.fromInstance(db),
      vpc,
      vpcSubnets: privateSubnets,
      defaultAuthScheme: rds.DefaultAuthScheme.IAM_AUTH,
      iamAuth: true,
      requireTLS: true,
      role: proxyRole,
      // Leave room for the holder's connections and an admin's psql.
      maxConnectionsPercent: 80,
      borrowTimeout: Duration.seconds(10),
    });
    // End-to-end IAM: the proxy logs in to the database as each client's user with its own
    // IAM token (no secrets), so it may connect as every user a function uses.
    const functionDbUsers = new Set(
      [...props.manifest.http, ...props.manifest.events].flatMap((f) => (f.dbUser ? [f.dbUser] : [])),
    );
    for (const user of [...functionDbUsers].sort()) db.grantConnect(proxyRole, user);
    proxy.connections.allowFrom(lambdaSg, ec2.Port.tcp(5432), 'functions that use the database');
    // Paused: no proxy (it is billed per vCPU of the instance, used or not). What names it
    // (the functions' PGHOST and rds-db:connect) takes Fn::If or the same condition, so
    // the template is valid either way. Its role and security group stay (free).
    const proxyParts = proxy.node
      .findAll()
      .filter((c): c is CfnResource => c instanceof rds.CfnDBProxy || c instanceof rds.CfnDBProxyTargetGroup);
    if (proxyParts.length !== 2) throw new Error('the DatabaseProxy construct changed its children');
    for (const c of proxyParts) c.cfnOptions.condition = notPaused;
    /** rds-db:connect through the proxy as `user` (what proxy.grantConnect would allow). */
    const proxyUserArn = (user: DbUser): string =>
      this.formatArn({
        service: 'rds-db',
        resource: 'dbuser',
        resourceName: `${this.splitArn(proxy.dbProxyArn, ArnFormat.COLON_RESOURCE_NAME).resourceName}/${user}`,
        arnFormat: ArnFormat.COLON_RESOURCE_NAME,
      });

    const dbEnvFor = (host: string, user: DbUser): Record<string, string> => ({
      PGHOST: host,
      PGPORT: '5432',
      PGDATABASE: DB_NAME,
      PGUSER: user,
      PGSSLMODE: 'require',
      LABLINK_DB_IAM_AUTH: '1',
    });

    // ---- Jobs table: launch/destroy/export jobs, the fleet lock, settings ----
    const jobs = new dynamodb.Table(this, 'JobsTable', {
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      stream: dynamodb.StreamViewType.NEW_IMAGE,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      timeToLiveAttribute: 'expires_at',
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      removalPolicy: RemovalPolicy.DESTROY,
    });

    // ---- Admin secret: {"user", "password_hash", "session_key"} ----
    const adminSecret = new secretsmanager.Secret(this, 'AdminSecret', {
      description: 'LabLink admin console: user, argon2 password hash, session signing key',
      generateSecretString: {
        secretStringTemplate: this.toJsonString({ user: adminUser, password_hash: adminPasswordHash }),
        generateStringKey: 'session_key',
        // 128 lower-case hex characters (64 bytes).
        passwordLength: 128,
        excludeUppercase: true,
        excludePunctuation: true,
        includeSpace: false,
        excludeCharacters: 'ghijklmnopqrstuvwxyz',
      },
      removalPolicy: RemovalPolicy.DESTROY,
    });

    // ---- Export bucket: data exports, private, expiring; VMs and admins use presigned URLs ----
    const exportBucket = new s3.Bucket(this, 'ExportBucket', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      enforceSSL: true,
      versioned: false,
      lifecycleRules: [
        {
          id: 'ExpireExports',
          expiration: Duration.days(exportRetention.valueAsNumber),
          abortIncompleteMultipartUploadAfter: Duration.days(1),
        },
      ],
      // Kept when the stack is deleted, like the database's final snapshot: CloudFormation
      // cannot delete a bucket with objects in it (emptying it would need a custom-resource
      // Lambda), and the lifecycle rule still expires what is left (docs/deploy.md).
      removalPolicy: RemovalPolicy.RETAIN,
    });

    // ---- VMs: log group, instance role (the client daemon only), instance profile ----
    // The VMs do not write CloudWatch Logs: an IAM policy cannot tie a log stream to the
    // instance writing it (the only per-instance policy variables hold ':' characters,
    // which stream names may not), so any VM could write every VM's stream. The daemon
    // ships its lines to POST /api/vm-logs with its own credential instead, which admits
    // its own hostname only (docs/api.md). The group stays for forwarders an admin runs
    // (its subscription feeds the log processor as before).
    const vmLogGroup = new logs.LogGroup(this, 'VmLogGroup', {
      logGroupName: Fn.join('', ['lablink-cloud-init-', environment]),
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const vmRole = new iam.Role(this, 'VmRole', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      description: 'LabLink VMs: read the client daemon (logs go to the API with the VM credential)',
    });
    // The client daemon: a file asset in the CDK bootstrap bucket (cdk-<qualifier>-assets-
    // <account>-<region>). Its SHA-256 is computed here from the file's bytes, not taken
    // from the asset hash (a fingerprint, not the file's digest), so the VM can check what
    // it downloaded. The VMs read this one object only: not asset.grantRead, which allows
    // the whole bucket. No kms:Decrypt: `cdk bootstrap` encrypts the bucket with SSE-KMS
    // under the account's aws/s3 key (or, with --bootstrap-customer-key, a key whose policy
    // lets any principal of the account decrypt through S3); both let s3:GetObject alone
    // read it. Only a bootstrap given its own key (--bootstrap-kms-key-id) with a stricter
    // policy would need a grant, and the synthesizer does not know that key.
    const daemonAsset = new s3assets.Asset(this, 'ClientDaemon', { path: props.daemon.path });
    vmRole.addToPolicy(
      new iam.PolicyStatement({
        sid: 'FetchClientDaemon',
        actions: ['s3:GetObject'],
        resources: [daemonAsset.bucket.arnForObjects(daemonAsset.s3ObjectKey)],
      }),
    );
    // Session Manager only when the admin asks for it (EnableSessionManager=true).
    (vmRole.node.defaultChild as iam.CfnRole).addPropertyOverride(
      'ManagedPolicyArns',
      Fn.conditionIf(
        sessionManagerEnabled.logicalId,
        [iam.ManagedPolicy.fromAwsManagedPolicyName(SESSION_MANAGER_POLICY).managedPolicyArn],
        Aws.NO_VALUE,
      ),
    );
    const vmProfile = new iam.InstanceProfile(this, 'VmInstanceProfile', { role: vmRole });

    // ---- Functions, one per manifest entry ----
    const fnSecurity = { vpc, vpcSubnets: privateSubnets, securityGroups: [lambdaSg] };
    const dbFunctions: lambda.Function[] = [];
    const allFunctions: lambda.Function[] = [];
    const functionLogs = new Map<lambda.Function, logs.LogGroup>();
    const makeFunction = (
      fn: string,
      description: string,
      opts: { db: DbUser | null; timeout: Duration; memory: number; env: Record<string, string> },
    ): lambda.Function => {
      const id = pascal(fn);
      const logGroup = new logs.LogGroup(this, `${id}Logs`, {
        retention: logs.RetentionDays.ONE_MONTH,
        removalPolicy: RemovalPolicy.DESTROY,
      });
      // Its own role: write its own log group (instead of the managed basic-execution
      // policy, which may write any log group), plus ENI management inside the VPC.
      const role = new iam.Role(this, `${id}Role`, {
        assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
        description: `LabLink function ${fn}`,
        managedPolicies: opts.db
          ? [iam.ManagedPolicy.fromAwsManagedPolicyName('service-role/AWSLambdaVPCAccessExecutionRole')]
          : [],
      });
      role.addToPrincipalPolicy(
        new iam.PolicyStatement({
          sid: 'WriteOwnLogs',
          actions: ['logs:CreateLogStream', 'logs:PutLogEvents'],
          resources: [logGroup.logGroupArn],
        }),
      );
      const f = new lambda.Function(this, `${id}Function`, {
        description: `LabLink ${description}`,
        runtime: lambda.Runtime.PROVIDED_AL2023,
        handler: 'bootstrap',
        architecture: props.architecture,
        code: props.code.codeFor(fn),
        memorySize: opts.memory,
        timeout: opts.timeout,
        environment: {
          RUST_LOG: 'info',
          // "true" between workshops: every route answers 503 (lablink_web::routes).
          LABLINK_PAUSED: paused,
          ...(opts.db ? dbEnvFor(ifPaused(PAUSED_DB_HOST, proxy.endpoint), opts.db) : {}),
          ...opts.env,
        },
        role,
        logGroup,
        // JSON lines: Lambda's own (START, REPORT) and ours, which lambda_runtime's
        // subscriber writes as JSON when Lambda sets AWS_LAMBDA_LOG_FORMAT=JSON, each in
        // its invocation's span with the request id. The alarms' metric filters read them.
        loggingFormat: lambda.LoggingFormat.JSON,
        ...(opts.db ? fnSecurity : {}),
      });
      Tags.of(f).add('lablink:function', fn);
      allFunctions.push(f);
      functionLogs.set(f, logGroup);
      if (opts.db) {
        // A policy of its own, present only while the proxy it names is.
        const connect = new iam.Policy(this, `${id}DatabaseConnect`, {
          roles: [role],
          statements: [
            new iam.PolicyStatement({ sid: 'ConnectThroughProxy', actions: ['rds-db:connect'], resources: [proxyUserArn(opts.db)] }),
          ],
        });
        (connect.node.defaultChild as iam.CfnPolicy).cfnOptions.condition = notPaused;
        dbFunctions.push(f);
      }
      return f;
    };
    const grantJobs = (f: lambda.Function): void => {
      jobs.grant(f, ...JOBS_TABLE_ACTIONS);
      f.addEnvironment('LABLINK_JOBS_TABLE', jobs.tableName);
    };
    // The manifest's export_bucket: object actions under exports/ only, never on the bucket
    // itself; the function gets the bucket's name.
    const grantExport = (f: lambda.Function, access: ExportBucketAccess): void => {
      if (access === 'none') return;
      f.addToRolePolicy(
        new iam.PolicyStatement({
          sid: access === 'read' ? 'ReadExports' : 'ReadWriteExports',
          actions: [...EXPORT_BUCKET_ACTIONS[access]],
          resources: [exportBucket.arnForObjects(`${EXPORT_PREFIX}*`)],
        }),
      );
      f.addEnvironment('LABLINK_EXPORT_BUCKET', exportBucket.bucketName);
    };

    const api = new apigwv2.HttpApi(this, 'Api', {
      apiName: Fn.join('', ['lablink-', environment]),
      description: 'LabLink: one route per function; POST /vm_startup and POST /vm_export to the holder',
      createDefaultStage: false,
    });
    const apiAccessLogs = new logs.LogGroup(this, 'ApiAccessLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const stage = new apigwv2.HttpStage(this, 'ApiDefaultStage', {
      httpApi: api,
      stageName: '$default',
      autoDeploy: true,
      throttle: { rateLimit: 500, burstLimit: 1000 },
      accessLogSettings: { destination: new apigwv2.LogGroupLogDestination(apiAccessLogs) },
    });
    // The custom domain when DomainName is set (what participants open and VMs call),
    // else https://<id>.execute-api.<region>.amazonaws.com/. The execute-api address keeps
    // working either way (VMs launched before the domain was set use it).
    const apiUrl = Fn.conditionIf(
      customDomain.logicalId,
      Fn.join('', ['https://', domainName, '/']),
      stage.url,
    ).toString();
    this.addCustomDomain({ api, stage, domainName, hostedZoneId, customDomain });

    const onlyOne = (what: string, found: EventFunction[]): EventFunction => {
      const [one] = found;
      if (found.length !== 1 || !one) throw new Error(`the manifest must have exactly one ${what}`);
      return one;
    };
    const launchOrDestroy = (f: HttpFunction): boolean => f.function === 'launch' || f.function === 'destroy';

    for (const route of props.manifest.http) {
      const env: Record<string, string> = {};
      if (route.adminSecret) env.LABLINK_ADMIN_SECRET_ID = adminSecret.secretArn;
      if (route.access === 'admin' || route.adminSecret) {
        env.LABLINK_ADMIN_ALLOWED_CIDRS = Fn.join(',', allowedCidrs);
      }
      // The admin pages show the fleet limit and ask for the deployment's name to destroy.
      if (launchOrDestroy(route) || route.access === 'admin') {
        env.LABLINK_MAX_VMS = maxVms;
        env.LABLINK_DEPLOYMENT = environment;
      }
      // The fleet's default life: the launch form and route, the dashboard.
      if (FLEET_HOURS_FUNCTIONS.includes(route.function)) env.LABLINK_FLEET_HOURS = fleetHours;
      // The workshop gate's defaults: where participants ask, and where the admin sees
      // and changes the gate.
      if (GATE_FUNCTIONS.includes(route.function)) {
        env.LABLINK_WORKSHOP_ACCESS_CODE = workshopAccessCode;
        env.LABLINK_WORKSHOP_PARTICIPANTS = workshopParticipants;
        env.LABLINK_SEATS_PER_ADDRESS = seatsPerAddress;
        env.LABLINK_SEATS_WINDOW_MINUTES = seatsWindowMinutes;
      }
      const f = makeFunction(route.function, `${route.method} ${route.path} (${route.access})`, {
        db: route.dbUser,
        timeout: Duration.seconds(29),
        memory: 256,
        env,
      });
      if (route.access === 'participant') {
        (f.node.defaultChild as lambda.CfnFunction).reservedConcurrentExecutions = props.participantConcurrency;
      }
      if (route.jobsTable) grantJobs(f);
      grantExport(f, route.exportBucket);
      if (route.adminSecret) {
        f.addToRolePolicy(
          new iam.PolicyStatement({
            sid: 'ReadAdminSecret',
            actions: ['secretsmanager:GetSecretValue'],
            resources: [adminSecret.secretArn],
          }),
        );
      }
      api.addRoutes({
        path: route.path,
        methods: [apigwv2.HttpMethod[route.method]],
        integration: new HttpLambdaIntegration(`${pascal(route.function)}Integration`, f),
      });
    }

    // Log processor: the VM log group's subscription.
    const logFn = onlyOne(
      'cloudwatch-logs-subscription function',
      props.manifest.events.filter((e) => e.trigger === 'cloudwatch-logs-subscription'),
    );
    const logProcessor = makeFunction(logFn.function, 'CloudWatch Logs subscription of the VM log group', {
      db: logFn.dbUser,
      timeout: Duration.seconds(60),
      memory: 256,
      env: {},
    });
    if (logFn.jobsTable) grantJobs(logProcessor);
    grantExport(logProcessor, logFn.exportBucket);
    new logs.SubscriptionFilter(this, 'VmLogSubscription', {
      logGroup: vmLogGroup,
      destination: new LambdaDestination(logProcessor),
      filterPattern: logs.FilterPattern.allEvents(),
    });

    // Provisioner: the jobs table's stream; launches and terminates the fleet.
    const provFn = onlyOne(
      'dynamodb-stream function',
      props.manifest.events.filter((e) => e.trigger === 'dynamodb-stream'),
    );
    const publicSubnetIds = vpc.publicSubnets.map((s) => s.subnetId);
    const provisioner = makeFunction(provFn.function, 'provisioner (jobs table stream)', {
      db: provFn.dbUser,
      // Lambda's maximum: a job's attempt lease (14 min, lablink_provision::ATTEMPT_LEASE)
      // is shorter, so a retry after a timeout can take the job over.
      timeout: Duration.minutes(15),
      memory: 256,
      env: {
        LABLINK_DEPLOYMENT: environment,
        // Empty: the provisioner reads the image from LABLINK_AMI_SSM_PARAMETER at launch.
        LABLINK_AMI_ID: amiId,
        LABLINK_AMI_SSM_PARAMETER: amiSsmParameter,
        LABLINK_INSTANCE_TYPE: machineType,
        LABLINK_VM_DISK_GB: vmDiskGb,
        LABLINK_SUBNET_IDS: Fn.join(',', publicSubnetIds),
        LABLINK_SECURITY_GROUP_IDS: vmSg.securityGroupId,
        LABLINK_INSTANCE_PROFILE_ARN: vmProfile.instanceProfileArn,
        LABLINK_MAX_VMS: maxVms,
        LABLINK_API_URL: apiUrl,
        LABLINK_VM_LOG_GROUP: vmLogGroup.logGroupName,
        // The VM fetches the daemon from here and refuses it unless its SHA-256 matches.
        LABLINK_DAEMON_BUCKET: daemonAsset.s3BucketName,
        LABLINK_DAEMON_KEY: daemonAsset.s3ObjectKey,
        LABLINK_DAEMON_SHA256: props.daemon.sha256,
        // The workshop, for each VM's user data.
        LABLINK_CLIENT_IMAGE: clientImage,
        LABLINK_TUTORIAL_REPO: tutorialRepo,
        LABLINK_SUBJECT_SOFTWARE: subjectSoftware,
        LABLINK_STARTUP_SCRIPT_B64: startupScriptB64,
        LABLINK_STARTUP_ON_ERROR: startupOnError,
        LABLINK_DESKTOP_USER: desktopUser,
        // Data exports (its access to the bucket comes from the manifest's export_bucket).
        LABLINK_EXPORT_BUCKET: exportBucket.bucketName,
        LABLINK_EXPORT_EXTENSIONS: exportExtensions,
        LABLINK_EXPORT_MAX_FILE_MB: exportMaxFileMb,
        LABLINK_EXPORT_WAIT_SECONDS: exportWaitSeconds,
      },
    });
    grantJobs(provisioner);
    grantExport(provisioner, provFn.exportBucket);
    const provisionerFailures = new sqs.Queue(this, 'ProvisionerFailures', {
      encryption: sqs.QueueEncryption.SQS_MANAGED,
      enforceSSL: true,
      retentionPeriod: Duration.days(14),
    });
    provisioner.addEventSource(
      new DynamoEventSource(jobs, {
        startingPosition: lambda.StartingPosition.TRIM_HORIZON,
        batchSize: 10,
        retryAttempts: 3,
        maxRecordAge: Duration.hours(1),
        bisectBatchOnError: true,
        onFailure: new SqsDlq(provisionerFailures),
      }),
    );
    if (provFn.ec2) {
      this.allowFleetControl(provisioner, { environment, amiId, amiIdGiven, publicSubnetIds, vmSg, vmRole });
    }
    // A fleet cannot be forgotten: every minute the provisioner checks the fleet's end
    // time and, once it has passed, submits its destroy job (lablink_provision::schedule).
    const fleetEndRule = new events.Rule(this, 'FleetEndSchedule', {
      description: "LabLink: destroy the fleet at its end time (checked every minute)",
      schedule: events.Schedule.rate(Duration.minutes(1)),
      targets: [new eventsTargets.LambdaFunction(provisioner, { retryAttempts: 2 })],
    });
    // Paused: no fleet (scripts/deploy --pause refuses while one exists), nothing to check.
    (fleetEndRule.node.defaultChild as events.CfnRule).state = ifPaused('DISABLED', 'ENABLED');

    // ---- Holder: ECS Fargate behind an internal ALB, reached through a VPC link ----
    const cluster = new ecs.Cluster(this, 'Cluster', { vpc });
    const holderLogs = new logs.LogGroup(this, 'HolderLogs', {
      retention: logs.RetentionDays.ONE_MONTH,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const holderTask = new ecs.FargateTaskDefinition(this, 'HolderTask', {
      cpu: 256,
      memoryLimitMiB: 512,
      runtimePlatform: {
        cpuArchitecture: ecs.CpuArchitecture.X86_64,
        operatingSystemFamily: ecs.OperatingSystemFamily.LINUX,
      },
    });
    db.grantConnect(holderTask.taskRole, HOLDER_DB_USER);
    const holderRepo = ecr.Repository.fromRepositoryName(
      this,
      'HolderRepository',
      Fn.join('', ['lablink-holder-', environment]),
    );
    const holderImage = ecs.ContainerImage.fromEcrRepository(holderRepo, holderImageTag);
    // `lablink-holder setup-db` from the holder's own image, as the master user: creates the
    // roles (lablink_owner, lablink_app, lablink_public), applies the migrations as
    // lablink_owner and grants each runtime role its privileges (shared/db/src/roles.rs);
    // idempotent, serialized by an advisory lock. The holder starts only after it
    // succeeded, so every deploy migrates before the new holders run. The master password
    // reaches this container only (as an ECS secret), and only our own code reads it: no
    // third-party image.
    const masterSecret = db.secret;
    if (!masterSecret) throw new Error('the database must have a generated master secret');
    const dbSetup = holderTask.addContainer('db-setup', {
      image: holderImage,
      essential: false,
      command: ['setup-db'],
      environment: {
        PGHOST: db.dbInstanceEndpointAddress,
        PGPORT: '5432',
        PGDATABASE: DB_NAME,
        PGSSLMODE: 'require',
        // RDS's CA bundle in the image (the instance's certificate is not under a public root).
        PGSSLROOTCERT: '/etc/lablink/rds-global-bundle.pem',
        RUST_LOG: 'info',
      },
      secrets: {
        PGUSER: ecs.Secret.fromSecretsManager(masterSecret, 'username'),
        PGPASSWORD: ecs.Secret.fromSecretsManager(masterSecret, 'password'),
      },
      logging: ecs.LogDrivers.awsLogs({ logGroup: holderLogs, streamPrefix: 'db-setup' }),
    });
    const holderContainer = holderTask.addContainer('holder', {
      image: holderImage,
      essential: true,
      portMappings: [{ containerPort: HOLDER_PORT, protocol: ecs.Protocol.TCP }],
      environment: {
        ...dbEnvFor(db.dbInstanceEndpointAddress, HOLDER_DB_USER),
        AWS_REGION: Aws.REGION,
        LABLINK_HOLDER_ADDR: `0.0.0.0:${HOLDER_PORT}`,
        LABLINK_HOLDER_DEFAULT_WAIT_SECONDS: '25',
        LABLINK_HOLDER_MAX_WAIT_SECONDS: String(props.holderMaxWaitSeconds),
        // How long a launched VM may take to report ready.
        LABLINK_BOOTSTRAP_DEADLINE_MINUTES: bootstrapDeadlineMinutes,
        // RDS's CA bundle, baked into the image (infra-cdk/holder/Dockerfile): the holder
        // connects to the instance, whose certificate is not under a public root.
        PGSSLROOTCERT: '/etc/lablink/rds-global-bundle.pem',
        RUST_LOG: 'info',
      },
      // One socket per waiting VM.
      ulimits: [{ name: ecs.UlimitName.NOFILE, softLimit: 65536, hardLimit: 65536 }],
      stopTimeout: Duration.seconds(30),
      logging: ecs.LogDrivers.awsLogs({ logGroup: holderLogs, streamPrefix: 'holder' }),
    });
    holderContainer.addContainerDependencies({
      container: dbSetup,
      condition: ecs.ContainerDependencyCondition.SUCCESS,
    });
    const holderService = new ecs.FargateService(this, 'HolderService', {
      cluster,
      taskDefinition: holderTask,
      desiredCount: HOLDER_TASKS,
      vpcSubnets: privateSubnets,
      securityGroups: [holderSg],
      assignPublicIp: false,
      minHealthyPercent: 100,
      maxHealthyPercent: 200,
      circuitBreaker: { enable: true, rollback: true },
      healthCheckGracePeriod: Duration.seconds(60),
    });
    // Paused: no holder task (the API's holder routes then get the load balancer's 503).
    (holderService.node.defaultChild as ecs.CfnService).addPropertyOverride('DesiredCount', ifPaused(0, HOLDER_TASKS));
    // On resume the tasks need the NAT routes (ECR, the master secret) before they start:
    // a tag that names the routes makes CloudFormation create them first (a DependsOn
    // cannot be conditional; a Ref inside Fn::If orders the same way when it applies).
    Tags.of(holderService).add(
      'lablink:egress',
      ifPaused('paused', Fn.join(',', natRoutes.map((r) => r.ref))),
    );
    // A deploy updates the functions that use the database only after the holder service is
    // steady, i.e. after a new task's db-setup has created any new role and applied any new
    // migration: new function code never meets an older schema or a missing user.
    for (const f of dbFunctions) f.node.addDependency(holderService);

    const albSg = new ec2.SecurityGroup(this, 'HolderLoadBalancerSecurityGroup', {
      vpc,
      description: 'LabLink holder load balancer (ingress from the API VPC link only)',
      allowAllOutbound: false,
    });
    const vpcLinkSg = new ec2.SecurityGroup(this, 'VpcLinkSecurityGroup', {
      vpc,
      description: 'API Gateway VPC link to the holder',
      allowAllOutbound: false,
    });
    vpcLinkSg.addEgressRule(albSg, ec2.Port.tcp(80), 'to the holder load balancer');
    albSg.addIngressRule(vpcLinkSg, ec2.Port.tcp(80), 'from the API VPC link');
    const alb = new elbv2.ApplicationLoadBalancer(this, 'HolderLoadBalancer', {
      vpc,
      internetFacing: false,
      vpcSubnets: privateSubnets,
      securityGroup: albSg,
      // Longer than any hold window, so the balancer never cuts a waiting poll.
      idleTimeout: Duration.seconds(holderIdleTimeoutSeconds(props.holderMaxWaitSeconds)),
      dropInvalidHeaderFields: true,
    });
    const listener = alb.addListener('Http', { port: 80, protocol: elbv2.ApplicationProtocol.HTTP, open: false });
    const holderTargets = listener.addTargets('Holder', {
      port: HOLDER_PORT,
      protocol: elbv2.ApplicationProtocol.HTTP,
      targets: [holderService],
      healthCheck: {
        path: HOLDER_HEALTH_PATH,
        healthyHttpCodes: '200',
        interval: Duration.seconds(15),
        timeout: Duration.seconds(5),
        healthyThresholdCount: 2,
        unhealthyThresholdCount: 3,
      },
      // The holder answers every waiter with 204 on SIGTERM; nothing is left to drain.
      deregistrationDelay: Duration.seconds(35),
    });
    const vpcLink = new apigwv2.VpcLink(this, 'HolderVpcLink', {
      vpc,
      subnets: privateSubnets,
      securityGroups: [vpcLinkSg],
    });
    // One integration for every holder route (CDK binds it once per API): the listener
    // forwards everything to the holder, whatever the path. The integration's logical id
    // comes from the first route bound, /vm_startup, so it is the one already deployed.
    const holderIntegration = new HttpAlbIntegration('HolderIntegration', listener, {
      vpcLink,
      // The most an HTTP API integration may take; the hold window stays below it.
      timeout: Duration.seconds(29),
    });
    for (const holderPath of HOLDER_ROUTE_PATHS) {
      api.addRoutes({ path: holderPath, methods: [apigwv2.HttpMethod.POST], integration: holderIntegration });
    }

    // ---- Paused: keep the database stopped ----
    // scripts/deploy --pause stops the instance (CloudFormation cannot); RDS starts a
    // stopped instance by itself after 7 days, so while paused a schedule stops it again.
    // Stopping an instance that is already stopped fails harmlessly (no retries).
    const keepStoppedRole = new iam.Role(this, 'KeepDatabaseStoppedRole', {
      assumedBy: new iam.ServicePrincipal('scheduler.amazonaws.com', {
        conditions: { StringEquals: { 'aws:SourceAccount': Aws.ACCOUNT_ID } },
      }),
      description: 'LabLink while paused: EventBridge Scheduler stops the database again after RDS restarts it',
      inlinePolicies: {
        StopDatabase: new iam.PolicyDocument({
          statements: [
            new iam.PolicyStatement({ sid: 'StopDatabase', actions: ['rds:StopDBInstance'], resources: [db.instanceArn] }),
          ],
        }),
      },
    });
    (keepStoppedRole.node.defaultChild as iam.CfnRole).cfnOptions.condition = isPaused;
    const keepStopped = new scheduler.CfnSchedule(this, 'KeepDatabaseStopped', {
      // Named, so that scripts/deploy --resume can disable it before it starts the
      // database (the update that deletes it comes later, and an hourly stop must not
      // catch the database in between).
      name: keepDatabaseStoppedName(environment),
      description: 'LabLink while paused: stop the database again (RDS starts a stopped instance after 7 days)',
      scheduleExpression: KEEP_DB_STOPPED_RATE,
      flexibleTimeWindow: { mode: 'OFF' },
      state: 'ENABLED',
      target: {
        // EventBridge Scheduler's universal target: the RDS API's StopDBInstance.
        arn: Fn.join('', ['arn:', Aws.PARTITION, ':scheduler:::aws-sdk:rds:stopDBInstance']),
        roleArn: keepStoppedRole.roleArn,
        input: this.toJsonString({ DbInstanceIdentifier: db.instanceIdentifier }),
        retryPolicy: { maximumRetryAttempts: 0 },
      },
    });
    keepStopped.cfnOptions.condition = isPaused;

    // ---- Watching: alarms to one topic, a dashboard, a budget (./watch.ts) ----
    const alarmTopic = addWatching(this, {
      environment,
      alarmEmail,
      alarmEmailSet,
      monthlyBudgetUsd,
      budgetSet,
      api,
      provisioner,
      provisionerLogs: functionLogs.get(provisioner)!,
      provisionerFailures,
      holderLogs,
      holderTargets,
      holderTasks: HOLDER_TASKS,
      paused: isPaused,
      database: db,
      functions: allFunctions,
    });

    // ---- Outputs ----
    new CfnOutput(this, 'ApiUrl', { value: apiUrl, description: 'LabLink: participants open this; VMs use it as LABLINK_API_URL' });
    new CfnOutput(this, 'HolderUrl', {
      value: Fn.join('', ['http://', alb.loadBalancerDnsName]),
      description: 'The holder inside the VPC (internal load balancer); VMs reach it at <ApiUrl>vm_startup and <ApiUrl>vm_export',
    });
    new CfnOutput(this, 'VmStartupUrl', { value: `${apiUrl}vm_startup`, description: 'POST /vm_startup through API Gateway' });
    new CfnOutput(this, 'VmExportUrl', { value: `${apiUrl}vm_export`, description: 'POST /vm_export through API Gateway' });
    new CfnOutput(this, 'JobsTableName', { value: jobs.tableName });
    new CfnOutput(this, 'VmLogGroupName', { value: vmLogGroup.logGroupName });
    new CfnOutput(this, 'AdminSecretArn', { value: adminSecret.secretArn });
    new CfnOutput(this, 'DatabaseInstanceId', {
      value: db.instanceIdentifier,
      description: 'scripts/deploy --pause stops this instance and --resume starts it',
    });
    new CfnOutput(this, 'ProvisionerFailureQueueUrl', { value: provisionerFailures.queueUrl });
    new CfnOutput(this, 'ExportBucketName', {
      value: exportBucket.bucketName,
      description: 'Data exports (exports/<job-id>/...); kept when the stack is deleted',
    });
    new CfnOutput(this, 'HolderRepositoryName', {
      value: holderRepo.repositoryName,
      description: 'ECR repository the holder image is pushed to before deploying',
    });
    new CfnOutput(this, 'HolderServiceName', { value: holderService.serviceName });
    new CfnOutput(this, 'ClusterName', { value: cluster.clusterName });
    new CfnOutput(this, 'AlarmTopicArn', {
      value: alarmTopic.topicArn,
      description: 'Alarms and budget alerts are published here (subscribe more addresses to it)',
    });
    new CfnOutput(this, 'DashboardName', {
      value: Fn.join('', ['lablink-', environment]),
      description: 'CloudWatch dashboard of this deployment',
    });
  }

  /**
   * With DomainName set: an ACM certificate validated through a DNS record in HostedZoneId
   * (CloudFormation writes it), a regional API Gateway custom domain (TLS 1.2, IPv4 and
   * IPv6) mapped to the $default stage, and alias A and AAAA records to it. Without
   * DomainName none of these exist.
   */
  private addCustomDomain(o: {
    api: apigwv2.HttpApi;
    stage: apigwv2.HttpStage;
    domainName: string;
    hostedZoneId: string;
    customDomain: CfnCondition;
  }): void {
    const certificate = new acm.CfnCertificate(this, 'ApiCertificate', {
      domainName: o.domainName,
      validationMethod: 'DNS',
      domainValidationOptions: [{ domainName: o.domainName, hostedZoneId: o.hostedZoneId }],
    });
    const domain = new apigwv2.CfnDomainName(this, 'ApiDomainName', {
      domainName: o.domainName,
      domainNameConfigurations: [
        {
          certificateArn: certificate.ref,
          endpointType: 'REGIONAL',
          securityPolicy: 'TLS_1_2',
          ipAddressType: 'dualstack',
        },
      ],
    });
    const mapping = new apigwv2.CfnApiMapping(this, 'ApiDomainMapping', {
      apiId: o.api.apiId,
      domainName: domain.ref,
      stage: (o.stage.node.defaultChild as apigwv2.CfnStage).ref,
    });
    const records = ['A', 'AAAA'].map(
      (type) =>
        new route53.CfnRecordSet(this, `ApiDomainRecord${type}`, {
          hostedZoneId: o.hostedZoneId,
          name: o.domainName,
          type,
          aliasTarget: {
            dnsName: domain.attrRegionalDomainName,
            hostedZoneId: domain.attrRegionalHostedZoneId,
            evaluateTargetHealth: false,
          },
        }),
    );
    for (const r of [certificate, domain, mapping, ...records]) r.cfnOptions.condition = o.customDomain;
  }

  /**
   * The provisioner's EC2 rights: run instances only with this deployment's tag, from the
   * configured AMI (or, without one, an Amazon-owned image) into the VM subnets and
   * security group; tag at launch, and afterwards only its own instances and only with
   * their names; terminate only instances that carry this deployment's tag; pass only the
   * VM role; read public SSM parameters (the default image's id).
   */
  private allowFleetControl(
    fn: lambda.Function,
    o: {
      environment: string;
      amiId: string;
      amiIdGiven: CfnCondition;
      publicSubnetIds: string[];
      vmSg: ec2.ISecurityGroup;
      vmRole: iam.IRole;
    },
  ): void {
    const ec2Arn = (resource: string, account: string = Aws.ACCOUNT_ID): string =>
      Fn.join('', ['arn:', Aws.PARTITION, ':ec2:', Aws.REGION, ':', account, ':', resource]);
    const instances = ec2Arn('instance/*');
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'RunTaggedInstances',
        actions: ['ec2:RunInstances'],
        resources: [instances],
        // Tagged with this deployment, and with IMDSv2 required (the provider asks for it).
        conditions: {
          StringEquals: {
            [`aws:RequestTag/${DEPLOYMENT_TAG}`]: o.environment,
            'ec2:MetadataHttpTokens': 'required',
          },
        },
      }),
    );
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'RunInstancesWith',
        actions: ['ec2:RunInstances'],
        resources: [
          ...o.publicSubnetIds.map((s) => ec2Arn(Fn.join('', ['subnet/', s]))),
          ec2Arn(Fn.join('', ['security-group/', o.vmSg.securityGroupId])),
          ec2Arn('network-interface/*'),
          ec2Arn('volume/*'),
        ],
      }),
    );
    // The image: a configured AmiId by its ARN (any owner: it may be the admin's own);
    // without one, the id comes from a public SSM parameter at launch, so any image, but
    // only one Amazon owns (the Deep Learning AMIs are).
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'RunInstancesFromImage',
        actions: ['ec2:RunInstances'],
        resources: [
          Fn.conditionIf(
            o.amiIdGiven.logicalId,
            ec2Arn(Fn.join('', ['image/', o.amiId]), ''),
            ec2Arn('image/*', ''),
          ).toString(),
        ],
        conditions: {
          StringLike: { 'ec2:Owner': Fn.conditionIf(o.amiIdGiven.logicalId, '*', 'amazon').toString() },
        },
      }),
    );
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'ReadPublicSsmParameters',
        actions: ['ssm:GetParameter'],
        // Public parameters have no account in their ARN.
        resources: [Fn.join('', ['arn:', Aws.PARTITION, ':ssm:', Aws.REGION, '::parameter/aws/service/*'])],
      }),
    );
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'TagAtLaunchOnly',
        actions: ['ec2:CreateTags'],
        resources: [instances, ec2Arn('volume/*'), ec2Arn('network-interface/*')],
        conditions: { StringEquals: { 'ec2:CreateAction': 'RunInstances' } },
      }),
    );
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'NameOwnInstances',
        actions: ['ec2:CreateTags'],
        resources: [instances],
        conditions: {
          StringEquals: { [`aws:ResourceTag/${DEPLOYMENT_TAG}`]: o.environment },
          'ForAllValues:StringEquals': { 'aws:TagKeys': VM_NAME_TAGS },
        },
      }),
    );
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'TerminateOwnInstances',
        actions: ['ec2:TerminateInstances'],
        resources: [instances],
        conditions: { StringEquals: { [`aws:ResourceTag/${DEPLOYMENT_TAG}`]: o.environment } },
      }),
    );
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'SeeInstances',
        // Describe calls have no resource-level permissions. DescribeImages: the image's
        // root device, which VmDiskGb sizes.
        actions: ['ec2:DescribeInstances', 'ec2:DescribeInstanceStatus', 'ec2:DescribeImages'],
        resources: ['*'],
      }),
    );
    fn.addToRolePolicy(
      new iam.PolicyStatement({
        sid: 'PassVmRole',
        actions: ['iam:PassRole'],
        resources: [o.vmRole.roleArn],
        conditions: { StringEquals: { 'iam:PassedToService': 'ec2.amazonaws.com' } },
      }),
    );
  }
}

/**
 * NAT gateways as CDK makes them (same resources, same logical ids), except that the
 * private subnets' default routes are not "internet connectivity established": CDK makes
 * every VPC function DependsOn those routes, and while paused the routes do not exist (a
 * DependsOn on a resource whose condition is false is a template error). A function needs
 * no route to be created.
 */
class PausableNatGateways extends ec2.NatGatewayProvider {
  public override configureSubnet(subnet: ec2.PrivateSubnet): void {
    const gateways = this.configuredGateways;
    const gateway = gateways.find((g) => g.az === subnet.availabilityZone) ?? gateways[0];
    if (!gateway) throw new Error('no NAT gateway configured');
    subnet.addRoute('DefaultRoute', {
      routerType: ec2.RouterType.NAT_GATEWAY,
      routerId: gateway.gatewayId,
      enablesInternetConnectivity: false,
    });
  }
}

/** The functions that use the fleet's default life (`LABLINK_FLEET_HOURS`). */
export const FLEET_HOURS_FUNCTIONS = ['launch', 'admin-create', 'admin-home', 'admin-fleet-end'];

/** The functions that apply or show the workshop gate (its defaults are their environment). */
export const GATE_FUNCTIONS = ['index', 'request-vm', 'admin-home', 'admin-workshop'];

/** The load balancer's idle timeout for a hold window: comfortably longer than it. */
export function holderIdleTimeoutSeconds(maxWaitSeconds: number): number {
  return Math.max(60, maxWaitSeconds + 30);
}
