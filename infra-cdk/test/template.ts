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

/**
 * The template as CloudFormation deploys it with these parameter values (the defaults for
 * the others): conditions evaluated, `Fn::If` replaced by its branch, `AWS::NoValue` and
 * resources and outputs whose condition is false dropped. Other intrinsics are left as they are.
 */
export function deployedWith(s: Synth, values: Record<string, string> = {}): Synth {
  const { holds } = conditionsWith(s, values);
  const noValue = Symbol('AWS::NoValue');
  const walk = (v: Json): Json => {
    if (Array.isArray(v)) return v.map(walk).filter((x) => x !== noValue);
    if (v === null || typeof v !== 'object') return v;
    if (v.Ref === 'AWS::NoValue') return noValue;
    if (Array.isArray(v['Fn::If'])) {
      const [name, yes, no] = v['Fn::If'];
      return walk(holds(name) ? yes : no);
    }
    const out: Record<string, Json> = {};
    for (const [k, x] of Object.entries(v)) {
      const w = walk(x);
      if (w !== noValue) out[k] = w;
    }
    return out;
  };
  const resources: Record<string, Json> = {};
  for (const [id, r] of Object.entries(s.resources)) {
    if (typeof r.Condition === 'string' && !holds(r.Condition)) continue;
    resources[id] = walk(r);
  }
  const outputs: Record<string, Json> = {};
  for (const [id, o] of Object.entries((s.json.Outputs ?? {}) as Record<string, Json>)) {
    if (typeof o.Condition === 'string' && !holds(o.Condition)) continue;
    outputs[id] = walk(o);
  }
  const json = { ...s.json, Resources: resources, Outputs: outputs };
  return { built: s.built, template: s.template, json, resources };
}

/**
 * The descriptions of the template's rules (its `Rules` section) whose assertions fail
 * with these parameter values (the defaults for the others): CloudFormation refuses such
 * a deploy before it creates anything.
 */
export function brokenRules(s: Synth, values: Record<string, string> = {}): string[] {
  const { evaluate } = conditionsWith(s, values);
  const broken: string[] = [];
  for (const rule of Object.values((s.json.Rules ?? {}) as Record<string, Json>)) {
    if (rule.RuleCondition && !evaluate(rule.RuleCondition)) continue;
    for (const a of rule.Assertions) if (!evaluate(a.Assert)) broken.push(a.AssertDescription);
  }
  return broken;
}

function conditionsWith(
  s: Synth,
  values: Record<string, string>,
): { holds: (name: string) => boolean; evaluate: (c: Json) => boolean } {
  const params: Record<string, Json> = s.json.Parameters ?? {};
  for (const k of Object.keys(values)) if (!params[k]) throw new Error(`no parameter ${k}`);
  const scalar = (v: Json): string => {
    if (typeof v === 'string') return v;
    if (typeof v?.Ref === 'string' && params[v.Ref]) return String(values[v.Ref] ?? params[v.Ref].Default);
    throw new Error(`cannot evaluate ${JSON.stringify(v)} in a condition`);
  };
  const conditions: Record<string, Json> = s.json.Conditions ?? {};
  const holds = (name: string): boolean => {
    const c = conditions[name];
    if (c === undefined) throw new Error(`no condition ${name}`);
    return evaluate(c);
  };
  const evaluate = (c: Json): boolean => {
    if (c['Fn::Equals']) return scalar(c['Fn::Equals'][0]) === scalar(c['Fn::Equals'][1]);
    if (c['Fn::Not']) return !evaluate(c['Fn::Not'][0]);
    if (c['Fn::And']) return c['Fn::And'].every(evaluate);
    if (c['Fn::Or']) return c['Fn::Or'].some(evaluate);
    if (typeof c.Condition === 'string') return holds(c.Condition);
    throw new Error(`cannot evaluate condition ${JSON.stringify(c)}`);
  };
  return { holds, evaluate };
}

/**
 * Worst-case deployed values, for the limits a template must respect at any parameter
 * values (Lambda's 4 KB of environment). The stack's name is assumed to be at most
 * `lablink-` plus a 20-character environment (samconfig.toml's `lablink-<environment>`);
 * CloudFormation's generated names are `<stack>-<logical id>-<13 random>`.
 */
export const WORST_CASE = {
  stackName: 'lablink-'.length + 20,
  pseudo: {
    'AWS::AccountId': 12,
    'AWS::Partition': 'aws-us-gov'.length,
    'AWS::Region': 'ap-southeast-5'.length,
    'AWS::URLSuffix': 'amazonaws.com.cn'.length,
  } as Record<string, number>,
};

/** The longest string `v` (any template value) can resolve to in a deployment of `s`. */
export function worstCaseLength(s: Synth, v: Json): number {
  if (typeof v === 'string') return v.length;
  if (typeof v === 'number') return String(v).length;
  const generatedName = (id: string): number => Math.min(WORST_CASE.stackName + 1 + id.length + 1 + 13, 255);
  if (typeof v.Ref === 'string') {
    const pseudo = WORST_CASE.pseudo[v.Ref];
    if (pseudo !== undefined) return pseudo;
    const param = s.json.Parameters?.[v.Ref];
    if (param) {
      if (param.AllowedValues) return Math.max(...param.AllowedValues.map((x: string) => String(x).length));
      if (param.Type === 'Number' && param.MaxValue !== undefined) return String(param.MaxValue).length;
      if (param.MaxLength !== undefined) return param.MaxLength;
      throw new Error(`parameter ${v.Ref} has no MaxLength, AllowedValues or MaxValue`);
    }
    const r = s.resources[v.Ref];
    switch (r?.Type) {
      case 'AWS::EC2::Subnet':
        return 'subnet-'.length + 17;
      case 'AWS::ApiGatewayV2::Api':
        return 10;
      case 'AWS::S3::Bucket':
        return r.Properties.BucketName ? worstCaseLength(s, r.Properties.BucketName) : 63;
      case 'AWS::Logs::LogGroup':
        return r.Properties.LogGroupName ? worstCaseLength(s, r.Properties.LogGroupName) : 512;
      case 'AWS::DynamoDB::Table':
        return r.Properties.TableName ? worstCaseLength(s, r.Properties.TableName) : generatedName(v.Ref);
      default:
        throw new Error(`no worst case for Ref ${v.Ref} (${r?.Type})`);
    }
  }
  if (Array.isArray(v['Fn::GetAtt'])) {
    const [id, attr] = v['Fn::GetAtt'];
    const r = s.resources[id];
    const arn = (service: string, resource: number): number =>
      `arn::${service}:::`.length + WORST_CASE.pseudo['AWS::Partition']! + WORST_CASE.pseudo['AWS::AccountId']! + resource;
    switch (`${r?.Type}.${attr}`) {
      case 'AWS::RDS::DBProxy.Endpoint':
        // <proxy name>.proxy-<12>.<region>.rds.<url suffix>
        return (
          worstCaseLength(s, r.Properties.DBProxyName) +
          '.proxy-'.length + 12 + 1 + WORST_CASE.pseudo['AWS::Region']! + '.rds.'.length + WORST_CASE.pseudo['AWS::URLSuffix']!
        );
      case 'AWS::EC2::SecurityGroup.GroupId':
        return 'sg-'.length + 17;
      case 'AWS::IAM::InstanceProfile.Arn':
        return arn('iam', 'instance-profile/'.length + 128);
      default:
        throw new Error(`no worst case for Fn::GetAtt ${id}.${attr} (${r?.Type})`);
    }
  }
  if (Array.isArray(v['Fn::Join'])) {
    const [sep, parts] = v['Fn::Join'];
    if (!Array.isArray(parts)) throw new Error(`Fn::Join of ${JSON.stringify(parts)}`);
    return parts.reduce((n: number, p: Json) => n + worstCaseLength(s, p), 0) + sep.length * Math.max(0, parts.length - 1);
  }
  if (Array.isArray(v['Fn::If'])) {
    // Either branch may be deployed: the longer one.
    const [, yes, no] = v['Fn::If'];
    return Math.max(worstCaseLength(s, yes), worstCaseLength(s, no));
  }
  if (typeof v['Fn::Sub'] === 'string') {
    return (v['Fn::Sub'] as string).replace(/\$\{([^}]+)\}/g, (_, name) => 'x'.repeat(worstCaseLength(s, { Ref: name }))).length;
  }
  throw new Error(`no worst case for ${JSON.stringify(v).slice(0, 200)}`);
}
