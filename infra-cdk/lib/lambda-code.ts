// Where each function's code comes from. The deploy path uses the cargo-lambda release
// artifacts (`scripts/build-lambdas` → `target/lambda/<function>/bootstrap.zip`); the test
// path synthesizes the same template from stand-in `bootstrap` files so that it needs no
// Rust build. This module owns that choice and nothing else.

import * as fs from 'node:fs';
import * as path from 'node:path';
import * as lambda from 'aws-cdk-lib/aws-lambda';

/**
 * `release`: every function must have its cargo-lambda zip (deploys use this).
 * `stand-in`: every function gets a stand-in bootstrap (fast tests, stable asset hashes).
 * `auto` (default): the zip where it exists, a stand-in (with a warning) where it does not.
 */
export type LambdaCodeMode = 'auto' | 'release' | 'stand-in';

export interface LambdaCodeOptions {
  readonly mode: LambdaCodeMode;
  /** cargo-lambda's output directory (`$CARGO_TARGET_DIR/lambda`). */
  readonly artifactDir: string;
  /** Where stand-in bootstrap files are written. */
  readonly standInDir: string;
}

export function parseLambdaCodeMode(v: unknown): LambdaCodeMode {
  const s = v === undefined ? 'auto' : String(v);
  if (s === 'auto' || s === 'release' || s === 'stand-in') return s;
  throw new Error(`context lablink:lambdaCode must be auto, release or stand-in (got ${s})`);
}

export class LambdaCodeSource {
  /** Functions that got a stand-in although the mode is `auto`. */
  readonly standIns: string[] = [];

  constructor(private readonly opts: LambdaCodeOptions) {}

  /** Checks up front so a release synth names every missing artifact at once. */
  requireAll(functions: readonly string[]): void {
    if (this.opts.mode !== 'release') return;
    const missing = functions.filter((f) => !fs.existsSync(this.zipOf(f)));
    if (missing.length > 0) {
      throw new Error(
        `lablink:lambdaCode=release but these cargo-lambda artifacts are missing under ${this.opts.artifactDir}: ` +
          `${missing.join(', ')}. Run scripts/build-lambdas (or set lablink:lambdaDir).`,
      );
    }
  }

  codeFor(fn: string): lambda.Code {
    const zip = this.zipOf(fn);
    if (this.opts.mode !== 'stand-in' && fs.existsSync(zip)) {
      return lambda.Code.fromAsset(zip);
    }
    if (this.opts.mode === 'release') {
      throw new Error(`missing ${zip} (run scripts/build-lambdas)`);
    }
    if (this.opts.mode === 'auto') this.standIns.push(fn);
    return lambda.Code.fromAsset(this.standIn(fn));
  }

  private zipOf(fn: string): string {
    return path.join(this.opts.artifactDir, fn, 'bootstrap.zip');
  }

  /** A directory holding an executable `bootstrap` that says what it is and exits 1. */
  private standIn(fn: string): string {
    const dir = path.join(this.opts.standInDir, fn);
    const file = path.join(dir, 'bootstrap');
    const body =
      '#!/bin/sh\n' +
      `echo "LabLink stand-in for ${fn}: deploy the cargo-lambda build (scripts/build-lambdas, docs/deploy.md)" >&2\n` +
      'exit 1\n';
    fs.mkdirSync(dir, { recursive: true });
    if (!fs.existsSync(file) || fs.readFileSync(file, 'utf8') !== body) {
      fs.writeFileSync(file, body, { mode: 0o755 });
    }
    return dir;
  }
}
