"""A VPC in moto's EC2 for the Kubernetes vpc-route test (tests/kubernetes.rs), through boto3
(moto's venv has it):

    moto_vpc.py setup ENDPOINT CLUSTER   a VPC, a subnet, a route table tagged
                                         kubernetes.io/cluster/CLUSTER=owned and one instance;
                                         prints {"vpc_id", "subnet_id", "route_table",
                                         "instance_id", "eni_id"} as JSON
    moto_vpc.py routes ENDPOINT TABLE    the table's routes: [{"dst", "eni", "instance"}]

Credentials and region come from the environment (AWS_ACCESS_KEY_ID, AWS_DEFAULT_REGION).
"""
import json
import sys

import boto3


def client(endpoint):
    return boto3.client("ec2", endpoint_url=endpoint)


def setup(endpoint, cluster):
    ec2 = client(endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.98.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.98.1.0/24")["Subnet"]["SubnetId"]
    table = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_tags(Resources=[table], Tags=[{"Key": f"kubernetes.io/cluster/{cluster}", "Value": "owned"}])
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=image, InstanceType="t3.micro", SubnetId=subnet, MinCount=1, MaxCount=1)
    i = inst["Instances"][0]
    print(json.dumps({"vpc_id": vpc, "subnet_id": subnet, "route_table": table,
                      "instance_id": i["InstanceId"],
                      "eni_id": i["NetworkInterfaces"][0]["NetworkInterfaceId"]}))


def routes(endpoint, table):
    ec2 = client(endpoint)
    t = ec2.describe_route_tables(RouteTableIds=[table])["RouteTables"][0]
    print(json.dumps([{"dst": r.get("DestinationCidrBlock"), "eni": r.get("NetworkInterfaceId"),
                       "instance": r.get("InstanceId")} for r in t["Routes"]]))


if __name__ == "__main__":
    {"setup": setup, "routes": routes}[sys.argv[1]](*sys.argv[2:])
