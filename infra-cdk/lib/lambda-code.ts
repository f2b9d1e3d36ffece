// Where each function's code and the client daemon binary come from. The deploy path uses
// the cargo-lambda release artifacts (`scripts/build-lambdas` →
// `target/lambda/<function>/bootstrap.zip`, `scripts/build-client-daemon` →
// `target/lambda/lablink-client-daemon/bootstrap`); the test path synthesizes the same
// template from stand-in files so that it needs no Rust build. This module owns that choice
// and nothing else.

import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as lambda from 'aws-cdk-lib/aws-lambda';

/**
 * `release`: every function must have its cargo-lambda zip, and the client daemon its
 * binary (deploys use this).
 * `stand-in`: every function gets a stand-in bootstrap and the daemon a stand-in file
 * (fast tests, stable asset hashes).
 * `auto` (default): the artifact where it exists, a stand-in (with a warning) where it does not.
 */
export type LambdaCodeMode = 'auto' | 'release' | 'stand-in';

export interface LambdaCodeOptions {
  readonly mode: LambdaCodeMode;
  /** cargo-lambda's output directory (`$CARGO_TARGET_DIR/lambda`). */
  readonly artifactDir: string;
  /** Where stand-in bootstrap files are written. */
  readonly standInDir: string;
  /** The client daemon binary; default `<artifactDir>/lablink-client-daemon/bootstrap`. */
  readonly daemonPath?: string;
}

/** The client daemon's package and binary name (client-daemon/Cargo.toml). */
export const DAEMON_BINARY = 'lablink-client-daemon';

/** The client daemon file the deployment ships, and its SHA-256 (lower-case hex). */
export interface DaemonBinary {
  readonly path: string;
  readonly sha256: string;
}

/** SHA-256 of a file's bytes, lower-case hex: what the VM checks the download against. */
export function sha256OfFile(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

export function parseLambdaCodeMode(v: unknown): LambdaCodeMode {
  const s = v === undefined ? 'auto' : String(v);
  if (s === 'auto' || s === 'release' || s === 'stand-in') return s;
  throw new Error(`context lablink:lambdaCode must be auto, release or stand-in (got ${s})`);
}

export class LambdaCodeSource {
  /** Functions that got a stand-in although the mode is `auto`. */
  readonly standIns: string[] = [];
  /** True when the client daemon got a stand-in although the mode is `auto`. */
  daemonStandIn = false;

  constructor(private readonly opts: LambdaCodeOptions) {}

  /** Checks up front so a release synth names every missing artifact at once. */
  requireAll(functions: readonly string[]): void {
    if (this.opts.mode !== 'release') return;
    const problems: string[] = [];
    const missing = functions.filter((f) => !fs.existsSync(this.zipOf(f)));
    if (missing.length > 0) {
      problems.push(
        `cargo-lambda artifacts are missing under ${this.opts.artifactDir}: ` +
          `${missing.join(', ')}. Run scripts/build-lambdas (or set lablink:lambdaDir).`,
      );
    }
    if (!isFile(this.daemonPath())) {
      problems.push(
        `the client daemon is missing: ${this.daemonPath()}. Run scripts/build-client-daemon (or set lablink:daemonPath).`,
      );
    }
    if (problems.length > 0) {
      throw new Error(`lablink:lambdaCode=release but:\n${problems.map((p) => `- ${p}`).join('\n')}`);
    }
  }

  /** The client daemon binary the deployment ships (a stand-in outside `release`, where missing). */
  daemon(): DaemonBinary {
    const file = this.daemonPath();
    if (this.opts.mode !== 'stand-in' && isFile(file)) return { path: file, sha256: sha256OfFile(file) };
    if (this.opts.mode === 'release') {
      throw new Error(`missing ${file} (run scripts/build-client-daemon)`);
    }
    if (this.opts.mode === 'auto') this.daemonStandIn = true;
    const standIn = this.daemonStandInFile();
    return { path: standIn, sha256: sha256OfFile(standIn) };
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

  private daemonPath(): string {
    return this.opts.daemonPath ?? path.join(this.opts.artifactDir, DAEMON_BINARY, 'bootstrap');
  }

  /** An executable file standing in for the daemon: says what it is and exits 1. */
  private daemonStandInFile(): string {
    const dir = path.join(this.opts.standInDir, DAEMON_BINARY);
    const file = path.join(dir, DAEMON_BINARY);
    const body =
      '#!/bin/sh\n' +
      `echo "LabLink stand-in for ${DAEMON_BINARY}: deploy the real build (scripts/build-client-daemon, docs/deploy.md)" >&2\n` +
      'exit 1\n';
    writeIfChanged(dir, file, body);
    return file;
  }

  /** A directory holding an executable `bootstrap` that says what it is and exits 1. */
  private standIn(fn: string): string {
    const dir = path.join(this.opts.standInDir, fn);
    const file = path.join(dir, 'bootstrap');
    const body =
      '#!/bin/sh\n' +
      `echo "LabLink stand-in for ${fn}: deploy the cargo-lambda build (scripts/build-lambdas, docs/deploy.md)" >&2\n` +
      'exit 1\n';
    writeIfChanged(dir, file, body);
    return dir;
  }
}

function isFile(file: string): boolean {
  return fs.statSync(file, { throwIfNoEntry: false })?.isFile() ?? false;
}

/** Writes an executable stand-in, leaving an identical one alone (its mtime, its asset hash). */
function writeIfChanged(dir: string, file: string, body: string): void {
  fs.mkdirSync(dir, { recursive: true });
  if (!fs.existsSync(file) || fs.readFileSync(file, 'utf8') !== body) {
    fs.writeFileSync(file, body, { mode: 0o755 });
  }
}
