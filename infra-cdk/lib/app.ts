// Builds the CDK app from context values (cdk.json, `-c key=value`, or a test's map).
// Every knob of the synth lives here, with its default, so `npx cdk synth` with no
// arguments works offline on a fresh clone.

import * as path from 'node:path';
import { App, DefaultStackSynthesizer } from 'aws-cdk-lib';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import { LabLinkStack } from './lablink-stack';
import { LambdaCodeSource, parseLambdaCodeMode } from './lambda-code';
import { defaultManifestPath, infraRoot, loadManifest } from './manifest';

export const STACK_NAME = 'LabLink';

/** Context keys (all optional). */
export const CONTEXT = {
  /** auto | release | stand-in (lib/lambda-code.ts). */
  lambdaCode: 'lablink:lambdaCode',
  /** cargo-lambda's output dir; default <repo>/target/lambda or $CARGO_TARGET_DIR/lambda. */
  lambdaDir: 'lablink:lambdaDir',
  /** The client daemon binary; default <lambdaDir>/lablink-client-daemon/bootstrap. */
  daemonPath: 'lablink:daemonPath',
  /** x86_64 (default) or arm64. */
  architecture: 'lablink:architecture',
  /** Function manifest; default <repo>/functions/manifest.json. */
  manifest: 'lablink:manifest',
  participantConcurrency: 'lablink:participantConcurrency',
  holderMaxWaitSeconds: 'lablink:holderMaxWaitSeconds',
  natGateways: 'lablink:natGateways',
  dbInstanceType: 'lablink:dbInstanceType',
  dbMultiAz: 'lablink:dbMultiAz',
} as const;

function intContext(app: App, key: string, dflt: number, min: number, max: number): number {
  const raw = app.node.tryGetContext(key);
  if (raw === undefined) return dflt;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new Error(`context ${key} must be an integer from ${min} to ${max} (got ${raw})`);
  }
  return n;
}

function architecture(v: unknown): lambda.Architecture {
  switch (v ?? 'x86_64') {
    case 'x86_64':
      return lambda.Architecture.X86_64;
    case 'arm64':
      return lambda.Architecture.ARM_64;
    default:
      throw new Error(`context ${CONTEXT.architecture} must be x86_64 or arm64 (got ${v})`);
  }
}

function defaultLambdaDir(): string {
  const target = process.env.CARGO_TARGET_DIR
    ? path.resolve(process.env.CARGO_TARGET_DIR)
    : path.join(infraRoot(), '..', 'target');
  return path.join(target, 'lambda');
}

export interface BuiltApp {
  readonly app: App;
  readonly stack: LabLinkStack;
  /** Functions that got a stand-in bootstrap in `auto` mode. */
  readonly standIns: readonly string[];
  /** True when the client daemon got a stand-in in `auto` mode. */
  readonly daemonStandIn: boolean;
}

export function buildApp(context: Record<string, unknown> = {}, outdir?: string): BuiltApp {
  const app = new App({ context, outdir });
  const ctx = (k: string): unknown => app.node.tryGetContext(k);
  const manifestPath = ctx(CONTEXT.manifest) ? path.resolve(String(ctx(CONTEXT.manifest))) : defaultManifestPath();
  const manifest = loadManifest(manifestPath);
  const code = new LambdaCodeSource({
    mode: parseLambdaCodeMode(ctx(CONTEXT.lambdaCode)),
    artifactDir: ctx(CONTEXT.lambdaDir) ? path.resolve(String(ctx(CONTEXT.lambdaDir))) : defaultLambdaDir(),
    standInDir: path.join(infraRoot(), '.stand-in-lambdas'),
    daemonPath: ctx(CONTEXT.daemonPath) ? path.resolve(String(ctx(CONTEXT.daemonPath))) : undefined,
  });
  code.requireAll([...manifest.http, ...manifest.events].map((f) => f.function));
  const stack = new LabLinkStack(app, STACK_NAME, {
    description: 'LabLink: GPU VMs for workshop participants (API, functions, holder, database, jobs)',
    // SAM deploys this template: no CDK bootstrap stack, no bootstrap-version rule; SAM
    // uploads the Lambda assets named in each function's aws:asset:path metadata.
    synthesizer: new DefaultStackSynthesizer({ generateBootstrapVersionRule: false }),
    analyticsReporting: false,
    manifest,
    code,
    daemon: code.daemon(),
    architecture: architecture(ctx(CONTEXT.architecture)),
    participantConcurrency: intContext(app, CONTEXT.participantConcurrency, 20, 1, 1000),
    holderMaxWaitSeconds: intContext(app, CONTEXT.holderMaxWaitSeconds, 27, 1, 3600),
    natGateways: intContext(app, CONTEXT.natGateways, 1, 1, 2),
    dbInstanceType: String(ctx(CONTEXT.dbInstanceType) ?? 't4g.small'),
    dbMultiAz: String(ctx(CONTEXT.dbMultiAz) ?? 'false') === 'true',
  });
  return { app, stack, standIns: code.standIns, daemonStandIn: code.daemonStandIn };
}
