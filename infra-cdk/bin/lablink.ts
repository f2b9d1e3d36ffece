#!/usr/bin/env node
// Entry point of `cdk synth` (cdk.json): the LabLink stack, configured from context.
import { buildApp } from '../lib/app';

const { app, standIns, daemonStandIn } = buildApp();
if (standIns.length > 0) {
  process.stderr.write(
    `note: no cargo-lambda artifact for ${standIns.length} function(s) (${standIns.join(', ')}); ` +
      'they got stand-in code. Deploys use -c lablink:lambdaCode=release (docs/deploy.md).\n',
  );
}
if (daemonStandIn) {
  process.stderr.write(
    'note: no client daemon build (target/lambda/lablink-client-daemon/bootstrap); the VMs would get a ' +
      'stand-in. Build it with scripts/build-client-daemon; deploys use -c lablink:lambdaCode=release.\n',
  );
}
app.synth();
