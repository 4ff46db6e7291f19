#!/usr/bin/env python3
"""The lab's EC2 "hypervisor" for a moto server (run with the moto venv's
python: it needs boto3). Credentials: AWS_ACCESS_KEY_ID / _SECRET_ from the
environment (moto takes any).

    ec2-booter.py setup ENDPOINT
        Creates the lab's network and images in moto and prints them as shell
        assignments: EC2_VPC, EC2_SUBNET (127.77.1.0/24 in VPC 127.77.0.0/16:
        every instance's private address is loopback), EC2_SG, and one AMI per
        image of tests/lab/ec2-instance.sh (EC2_AMI_DEBIAN, EC2_AMI_NIXOS).

    ec2-booter.py run ENDPOINT DIR AMI=IMAGE...
        Every 0.5 s lists the instances. Each one newly `running` is booted:
        its user data (DescribeInstanceAttribute) goes to DIR/<id>/user-data
        and `ec2-instance.sh boot DIR/<id> IMAGE IP` runs until the instance
        ends (output: DIR/<id>/console.log; its PID in DIR/<id>/pid). An
        instance that moto reports stopping, stopped, shutting-down or
        terminated is stopped (the plug pulled). An instance that ends by
        itself (its poweroff) is told to moto as the hypervisor would: its
        InstanceInitiatedShutdownBehavior decides (terminate:
        TerminateInstances; stop: StopInstances). One line per event on
        stdout. An address outside 127.0.0.0/8 or an unknown AMI is not
        booted (said so). SIGTERM stops every instance, then the booter.
"""
import base64
import os
import signal
import subprocess
import sys
import time

import boto3

LAB = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VPC_CIDR, SUBNET_CIDR = "127.77.0.0/16", "127.77.1.0/24"
IMAGES = {"debian": "Debian 13 (trixie), Nix 2.26, cloud-init",
          "nixos": "NixOS-like layout (Debian sid root), Nix 2.34, amazon-init"}
GONE = ("stopping", "stopped", "shutting-down", "terminated")


def client(endpoint):
    return boto3.client("ec2", region_name="us-east-1", endpoint_url=endpoint)


def say(msg):
    print("%s %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def setup(endpoint):
    ec2 = client(endpoint)
    vpc = ec2.create_vpc(CidrBlock=VPC_CIDR)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=SUBNET_CIDR)["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="nix-relay-lab", Description="ssh from the relay",
                                   VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
        "IpRanges": [{"CidrIp": "127.0.0.0/8"}]}])
    print("EC2_VPC=%s EC2_SUBNET=%s EC2_SG=%s" % (vpc, subnet, sg))
    for name, desc in IMAGES.items():
        ami = ec2.register_image(Name="nix-relay-lab-" + name, Description=desc,
                                 Architecture="arm64", RootDeviceName="/dev/xvda",
                                 VirtualizationType="hvm")["ImageId"]
        print("EC2_AMI_%s=%s" % (name.upper(), ami))


class Booter:
    def __init__(self, endpoint, root, images):
        self.ec2 = client(endpoint)
        self.root = root
        self.images = images
        self.live = {}   # id -> Popen of ec2-instance.sh boot
        self.ignored = set()

    def instances(self):
        for r in self.ec2.describe_instances()["Reservations"]:
            yield from r["Instances"]

    def boot(self, inst):
        iid, ip, ami = inst["InstanceId"], inst.get("PrivateIpAddress", ""), inst["ImageId"]
        image = self.images.get(ami)
        if image is None or not ip.startswith("127."):
            say("%s: not booted: %s" % (iid, "unknown AMI " + ami if image is None
                                        else "address %r is not in 127.0.0.0/8" % ip))
            self.ignored.add(iid)
            return
        d = os.path.join(self.root, iid)
        os.makedirs(d, exist_ok=True)
        ud = self.ec2.describe_instance_attribute(InstanceId=iid, Attribute="userData")
        with open(os.path.join(d, "user-data"), "wb") as f:
            f.write(base64.b64decode(ud["UserData"].get("Value", "")))
        log = open(os.path.join(d, "console.log"), "ab")
        p = subprocess.Popen([os.path.join(LAB, "ec2-instance.sh"), "boot", d, image, ip],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        with open(os.path.join(d, "pid"), "w") as f:
            f.write("%d\n" % p.pid)
        self.live[iid] = p
        say("%s: booted image %s at %s (pid %d)" % (iid, image, ip, p.pid))

    def pull_plug(self, iid, why):
        p = self.live.pop(iid)
        subprocess.run([os.path.join(LAB, "ec2-instance.sh"), "stop", str(p.pid)], check=False)
        p.wait()
        say("%s: stopped: %s" % (iid, why))

    def powered_off(self, iid):
        self.live.pop(iid)
        b = self.ec2.describe_instance_attribute(InstanceId=iid,
                                                 Attribute="instanceInitiatedShutdownBehavior")
        how = b["InstanceInitiatedShutdownBehavior"]["Value"]
        if how == "terminate":
            self.ec2.terminate_instances(InstanceIds=[iid])
        else:
            self.ec2.stop_instances(InstanceIds=[iid])
        say("%s: powered itself off; shutdown behaviour %s: %s" % (
            iid, how, "terminated" if how == "terminate" else "stopped"))

    def step(self):
        for inst in self.instances():
            iid, state = inst["InstanceId"], inst["State"]["Name"]
            if iid in self.live and self.live[iid].poll() is None and state in GONE:
                self.pull_plug(iid, "moto says " + state)
            elif state == "running" and iid not in self.live and iid not in self.ignored:
                if not os.path.exists(os.path.join(self.root, iid)):
                    self.boot(inst)
        for iid, p in list(self.live.items()):
            if p.poll() is not None:
                self.powered_off(iid)

    def stop_all(self, *_):
        for iid in list(self.live):
            self.pull_plug(iid, "booter stopped")
        sys.exit(0)


def run(endpoint, root, pairs):
    images = dict(kv.split("=", 1) for kv in pairs)
    for img in images.values():
        assert img in IMAGES, "unknown image %r" % img
    b = Booter(endpoint, root, images)
    signal.signal(signal.SIGTERM, b.stop_all)
    signal.signal(signal.SIGINT, b.stop_all)
    say("booter: %s, images %s, instances under %s" % (endpoint, images, root))
    while True:
        try:
            b.step()
        except Exception as e:  # moto restarting, a call refused: say so, go on
            say("booter: %s: %s" % (type(e).__name__, e))
        time.sleep(0.5)


def main():
    a = sys.argv[1:]
    if len(a) == 2 and a[0] == "setup":
        setup(a[1])
    elif len(a) >= 3 and a[0] == "run":
        run(a[1], a[2], a[3:])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
