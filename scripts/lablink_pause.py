"""Pause and resume a deployment between workshops (`scripts/deploy --env NAME --pause`,
`--resume`; docs/deploy.md, "Between workshops: pause and resume").

Pause: refuse while any VM of the deployment exists (it would lose its holder and its
database); update the stack with its own template and settings, Paused=true (no NAT
gateway, no proxy, no holder task, every route 503); then stop the database instance
(CloudFormation cannot). Resume: start the database and wait until it is available, update
the stack with Paused=false, and check GET /api/health. Nothing is deleted: VM rows, logs,
jobs and exports stay where they are.

boto3 only (the project venv's); every client honours AWS_ENDPOINT_URL, which is how
scripts/test-pause runs this against moto_server.
"""
import json
import time
import urllib.error
import urllib.request

DEPLOYMENT_TAG = "lablink:deployment"
# An instance in any of these states still belongs to a fleet (and costs, or will).
FLEET_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]


class PauseError(Exception):
    pass


def stack_name(env):
    return f"lablink-{env}"


def fleet(ec2, env):
    """The deployment's instances that still exist, as 'name (id, state)'."""
    found = []
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[
        {"Name": f"tag:{DEPLOYMENT_TAG}", "Values": [env]},
        {"Name": "instance-state-name", "Values": FLEET_STATES},
    ])
    for page in pages:
        for reservation in page["Reservations"]:
            for i in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in i.get("Tags", [])}
                name = tags.get("lablink:hostname") or tags.get("Name") or i["InstanceId"]
                found.append(f"{name} ({i['InstanceId']}, {i['State']['Name']})")
    return sorted(found)


def describe(cfn, stack):
    try:
        return cfn.describe_stacks(StackName=stack)["Stacks"][0]
    except cfn.exceptions.ClientError as e:
        raise PauseError(f"stack {stack}: {e.response['Error']['Message']}") from e


def output(desc, key):
    for o in desc.get("Outputs", []):
        if o["OutputKey"] == key:
            return o["OutputValue"]
    raise PauseError(f"stack {desc['StackName']} has no output {key} (deploy this version first)")


def pause_parameters(desc, paused):
    """Every parameter at its previous value, except Paused."""
    keys = [p["ParameterKey"] for p in desc.get("Parameters", [])]
    if "Paused" not in keys:
        raise PauseError(f"stack {desc['StackName']} has no Paused parameter: deploy this version with "
                         "scripts/deploy first")
    params = [{"ParameterKey": k, "UsePreviousValue": True} for k in keys if k != "Paused"]
    params.append({"ParameterKey": "Paused", "ParameterValue": "true" if paused else "false"})
    return params


def set_paused(cfn, stack, paused, log):
    desc = describe(cfn, stack)
    current = {p["ParameterKey"]: p.get("ParameterValue") for p in desc.get("Parameters", [])}
    params = pause_parameters(desc, paused)
    want = "true" if paused else "false"
    if current.get("Paused") == want:
        log(f"stack {stack}: already Paused={want}")
        return
    log(f"stack {stack}: updating with its previous template and settings, Paused={want}")
    cfn.update_stack(StackName=stack, UsePreviousTemplate=True, Parameters=params,
                     Capabilities=desc.get("Capabilities") or CAPABILITIES)
    cfn.get_waiter("stack_update_complete").wait(StackName=stack, WaiterConfig={"Delay": 15, "MaxAttempts": 240})
    log(f"stack {stack}: Paused={want}")


def db_status(rds, db_id):
    return rds.describe_db_instances(DBInstanceIdentifier=db_id)["DBInstances"][0]["DBInstanceStatus"]


def wait_db(rds, db_id, wanted, poll, timeout=3600):
    deadline = time.monotonic() + timeout
    while True:
        status = db_status(rds, db_id)
        if status == wanted:
            return
        if time.monotonic() > deadline:
            raise PauseError(f"database {db_id} is still {status}, not {wanted}")
        time.sleep(poll)


def deployment(desc):
    """The stack's Environment parameter: what its VMs are tagged with and its schedule is
    named after (not necessarily samconfig's environment name)."""
    for p in desc.get("Parameters", []):
        if p["ParameterKey"] == "Environment":
            return p["ParameterValue"]
    raise PauseError(f"stack {desc['StackName']} has no Environment parameter")


def keep_stopped_schedule(environment):
    """The schedule that stops the database while paused (infra-cdk: keepDatabaseStoppedName)."""
    return f"lablink-{environment}-keep-database-stopped"


def disable_keep_stopped(scheduler, environment, log):
    """Before a resume starts the database: the paused stack's hourly stop must not catch
    it while the update that deletes the schedule runs (15 minutes or more)."""
    name = keep_stopped_schedule(environment)
    try:
        current = scheduler.get_schedule(Name=name)
    except scheduler.exceptions.ResourceNotFoundException:
        return
    if current.get("State") == "DISABLED":
        return
    # UpdateSchedule replaces the whole definition: send it back as it is, disabled.
    keep = ("GroupName", "ScheduleExpression", "ScheduleExpressionTimezone", "StartDate", "EndDate",
            "Description", "FlexibleTimeWindow", "Target", "KmsKeyArn", "ActionAfterCompletion")
    scheduler.update_schedule(Name=name, State="DISABLED", **{k: current[k] for k in keep if k in current})
    log(f"schedule {name}: disabled (the stack update deletes it)")


def pause(session, env, log=print, poll=30):
    stack = stack_name(env)
    cfn, rds = session.client("cloudformation"), session.client("rds")
    desc = describe(cfn, stack)
    environment = deployment(desc)
    left = fleet(session.client("ec2"), environment)
    if left:
        raise PauseError(f"{len(left)} VM(s) of {environment} still exist: {', '.join(left)}. Destroy the fleet "
                         "first (admin console, Destroy), then pause.")
    db_id = output(desc, "DatabaseInstanceId")
    set_paused(cfn, stack, True, log)
    status = db_status(rds, db_id)
    if status == "available":
        log(f"database {db_id}: stopping (storage and backups are kept)")
        rds.stop_db_instance(DBInstanceIdentifier=db_id)
    elif status not in ("stopping", "stopped"):
        raise PauseError(f"database {db_id} is {status}: run --pause again once it is available")
    wait_db(rds, db_id, "stopped", poll)
    log(f"paused: {stack} (resume with scripts/deploy --env {env} --resume)")


def resume(session, env, log=print, poll=30):
    stack = stack_name(env)
    cfn, rds = session.client("cloudformation"), session.client("rds")
    desc = describe(cfn, stack)
    db_id = output(desc, "DatabaseInstanceId")
    disable_keep_stopped(session.client("scheduler"), deployment(desc), log)
    status = db_status(rds, db_id)
    if status == "stopping":
        wait_db(rds, db_id, "stopped", poll)
        status = "stopped"
    if status == "stopped":
        log(f"database {db_id}: starting")
        rds.start_db_instance(DBInstanceIdentifier=db_id)
    log(f"database {db_id}: waiting until it is available")
    wait_db(rds, db_id, "available", poll)
    set_paused(cfn, stack, False, log)
    api = output(describe(cfn, stack), "ApiUrl")
    health = api.rstrip("/") + "/api/health"
    # A just-created proxy takes a minute or two to register the database: retry a
    # failing answer for about two minutes, but not "paused" (the update did not apply).
    for attempt in range(HEALTH_ATTEMPTS):
        body = health_answer(health)
        if body.get("status") in ("ok", "paused") or attempt == HEALTH_ATTEMPTS - 1:
            break
        log(f"GET {health}: {body.get('status')}; again in {HEALTH_RETRY_SECONDS} s")
        time.sleep(HEALTH_RETRY_SECONDS)
    if body.get("status") != "ok":
        raise PauseError(f"resumed, but GET {health} says {body}")
    log(f"resumed: {api} (health ok)")


HEALTH_ATTEMPTS = 12
HEALTH_RETRY_SECONDS = 10


def health_answer(url):
    """GET /api/health's JSON, or what went wrong as {"status": ...}."""
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        try:
            return json.loads(e.read(2000))
        except ValueError:
            return {"status": f"HTTP {e.code}"}
    except (OSError, ValueError) as e:
        return {"status": f"no answer ({e})"}
