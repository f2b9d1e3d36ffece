// Test helpers: synthesize the stack without any Rust build (stand-in bootstraps) and
// walk the template the way CloudFormation would resolve it (route → integration →
// function → role → policies).

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Template } from 'aws-cdk-lib/assertions';
import { buildApp, BuiltApp } from '../lib/app';

export type Json = any; // eslint-disable-line @typescript-eslint/no-explicit-any

export interface Synth {
  readonly built: BuiltApp;
  readonly template: Template;
  readonly json: Json;
  readonly resources: Record<string, Json>;
}

export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `lablink-${prefix}-`));
}

export function synth(context: Record<string, unknown> = {}): Synth {
  const built = buildApp({ 'lablink:lambdaCode': 'stand-in', ...context }, tempDir('cdk-out'));
  const template = Template.fromStack(built.stack);
  const json = template.toJSON();
  return { built, template, json, resources: json.Resources };
}

export function ofType(s: Synth, type: string): [string, Json][] {
  return Object.entries(s.resources).filter(([, r]) => r.Type === type);
}

/** Logical id → the `lablink:function` tag (the manifest's function name). */
export function functionsByName(s: Synth): Map<string, string> {
  const out = new Map<string, string>();
  for (const [id, r] of ofType(s, 'AWS::Lambda::Function')) {
    const tag = (r.Properties.Tags ?? []).find((t: Json) => t.Key === 'lablink:function');
    if (!tag) throw new Error(`function ${id} has no lablink:function tag`);
    if (out.has(tag.Value)) throw new Error(`two functions are tagged ${tag.Value}`);
    out.set(tag.Value, id);
  }
  return out;
}

export function fn(s: Synth, name: string): Json {
  const id = functionsByName(s).get(name);
  if (!id) throw new Error(`no function ${name}`);
  return s.resources[id];
}

export function envOf(s: Synth, name: string): Record<string, Json> {
  return fn(s, name).Properties.Environment?.Variables ?? {};
}

/** `{"Fn::GetAtt": [id, ...]}` or `{"Ref": id}` → id. */
export function refId(v: Json): string | undefined {
  if (v && typeof v === 'object') {
    if (typeof v.Ref === 'string') return v.Ref;
    if (Array.isArray(v['Fn::GetAtt'])) return v['Fn::GetAtt'][0];
  }
  return undefined;
}

export interface Statement {
  readonly Sid?: string;
  readonly Effect: string;
  readonly Action: string[];
  readonly Resource: Json[];
  readonly Condition?: Json;
  /** The role the statement is attached to. */
  readonly role: string;
}

/** Every statement of every identity policy, with the role(s) it is attached to. */
export function allStatements(s: Synth): Statement[] {
  const out: Statement[] = [];
  const push = (doc: Json, roles: string[]): void => {
    for (const st of doc.Statement) {
      for (const role of roles) {
        out.push({
          ...st,
          Action: [st.Action].flat(),
          Resource: [st.Resource].flat(),
          role,
        });
      }
    }
  };
  for (const [, r] of ofType(s, 'AWS::IAM::Policy')) {
    push(r.Properties.PolicyDocument, (r.Properties.Roles ?? []).map(refId));
  }
  for (const [id, r] of ofType(s, 'AWS::IAM::Role')) {
    for (const p of r.Properties.Policies ?? []) push(p.PolicyDocument, [id]);
  }
  for (const [, r] of ofType(s, 'AWS::IAM::ManagedPolicy')) {
    push(r.Properties.PolicyDocument, (r.Properties.Roles ?? []).map(refId));
  }
  return out;
}

export function roleOfFunction(s: Synth, name: string): string {
  const id = refId(fn(s, name).Properties.Role);
  if (!id) throw new Error(`function ${name} has no role in the template`);
  return id;
}

export function statementsOfFunction(s: Synth, name: string): Statement[] {
  const role = roleOfFunction(s, name);
  return allStatements(s).filter((st) => st.role === role);
}

export function actionsOf(statements: Statement[]): Set<string> {
  return new Set(statements.filter((st) => st.Effect === 'Allow').flatMap((st) => st.Action));
}

/** The function an HTTP API route invokes (route → integration → Lambda ARN). */
export function routeTarget(
  s: Synth,
  routeKey: string,
): { integrationId: string; integration: Json; functionId?: string } {
  const routes = ofType(s, 'AWS::ApiGatewayV2::Route').filter(([, r]) => r.Properties.RouteKey === routeKey);
  if (routes.length !== 1) throw new Error(`expected one route ${routeKey}, found ${routes.length}`);
  const target = routes[0]![1].Properties.Target;
  const join = target['Fn::Join'][1];
  const integrationId = refId(join[1]);
  if (!integrationId) throw new Error(`route ${routeKey} has no integration`);
  const integration = s.resources[integrationId];
  return { integrationId, integration, functionId: refId(integration.Properties.IntegrationUri) };
}

/** True when `v` (any template value) mentions the logical id or parameter `id`. */
export function mentions(v: Json, id: string): boolean {
  return (JSON.stringify(v) ?? "").includes(`"${id}"`);
}
