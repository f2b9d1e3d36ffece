#!/usr/bin/env node
// Entry point of `cdk synth` (cdk.json): the LabLink stack, configured from context.
import { buildApp } from '../lib/app';

const { app, standIns } = buildApp();
if (standIns.length > 0) {
  process.stderr.write(
    `note: no cargo-lambda artifact for ${standIns.length} function(s) (${standIns.join(', ')}); ` +
      'they got stand-in code. Deploys use -c lablink:lambdaCode=release (docs/deploy.md).\n',
  );
}
app.synth();
