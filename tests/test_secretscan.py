"""The secret scan: what it must flag, what it must leave alone, and the project itself."""

import json
import random
import string
import time

import pytest

from flows.publishing.lineage import PROJECT_ROOT, export_source, git_commit
from flows.publishing.secretscan import find_secrets, scan_text, secret_name
from flows.servers.local import LOCAL_CREDENTIALS

ALNUM = string.ascii_letters + string.digits


def fake(length: int, alphabet: str = ALNUM + "/+", seed: int = 0) -> str:
    """A random string of a secret's shape, made at test time so this file holds none."""
    return "".join(random.Random(seed * 1000 + length).choices(alphabet, k=length))


def upper(length: int, seed: int = 0) -> str:
    return fake(length, string.ascii_uppercase + string.digits, seed)


SECRET = fake(40)
KEY_ID = "AK" + "IA" + upper(16)
# Setting names, spelt out in pieces so no line of this file looks like a setting.
AWS_SECRET = "AWS_SECRET_" + "ACCESS_KEY"


def positives() -> list[tuple[str, str, str]]:
    """(file name, content, what the scan must report) for each credential form."""
    lower = AWS_SECRET.lower()
    return [
        ("settings.py", f'{AWS_SECRET} = "{SECRET}"\n', "an AWS secret access key"),
        ("deploy.sh", f"export {AWS_SECRET}={SECRET}\n", "an AWS secret access key"),
        ("conf.json", json.dumps({AWS_SECRET: SECRET}), "an AWS secret access key"),
        ("sts.json", json.dumps({"Credentials": {"Secret" + "AccessKey": SECRET}}),
         "an AWS secret access key"),
        ("conf.yaml", f"aws:\n  {lower}: {SECRET}\n", "an AWS secret access key"),
        ("conf.yml", f"{lower}: '{SECRET}'\n", "an AWS secret access key"),
        ("dotenv.txt", f"{AWS_SECRET}={SECRET}\n", "an AWS secret access key"),
        ("profile.ini", f"[default]\n{lower} = {SECRET}\n", "an AWS secret access key"),
        ("client.py", f'boto3.client("s3", {lower}="{SECRET}")\n', "an AWS secret access key"),
        ("mixed.py", f'Aws_Secret_Access_Key := "{SECRET}"\n', "an AWS secret access key"),
        ("settings.rb", f'config["aws_secret"] = "{SECRET}"\n', "an AWS secret access key"),
        ("ids.py", f'key_id = "{KEY_ID}"\n', "an AWS access key id"),
        ("session.sh", f"export AWS_ACCESS_KEY_ID={'AS' + 'IA' + upper(16, 1)}\n",
         "an AWS access key id"),
        ("gh.py", f'token = "{"gh" + "p_" + fake(36, ALNUM)}"\n', "a GitHub token"),
        ("gh.yaml", f"token: {'github' + '_pat_' + fake(22, ALNUM) + '_' + fake(59, ALNUM)}\n",
         "a GitHub token"),
        ("gl.sh", f"GITLAB_TOKEN={'gl' + 'pat-' + fake(20, ALNUM + '_-')}\n", "a GitLab token"),
        ("runner.toml", f'token = "{"GR13" + "48941" + fake(20, ALNUM)}"\n', "a GitLab token"),
        ("slack.py", f'SLACK = "{"xo" + "xb-" + "1234567890-" + fake(24, ALNUM)}"\n',
         "a Slack token"),
        ("hook.txt", "https://hooks." + "slack.com/services/T" + upper(8) + "/B" + upper(8, 2)
         + "/" + fake(24, ALNUM), "a Slack token"),
        ("maps.js", f'const key = "{"AI" + "za" + fake(35, ALNUM + "_-")}";\n',
         "a Google API key"),
        ("oauth.json", json.dumps({"client_secret": "GOC" + "SPX-" + fake(28, ALNUM)}),
         "a Google OAuth client secret"),
        ("id.txt", "-----BEGIN OPENSSH " + "PRIVATE KEY-----\nb3Blbn\n", "a private key"),
        ("sa.json", json.dumps({"private_key": "-----BEGIN " + "PRIVATE KEY-----\nMIIE\n"}),
         "a private key"),
        ("pgp.asc", "-----BEGIN PGP " + "PRIVATE KEY BLOCK-----\n", "a private key"),
        ("upload.cfg", f"password = {'pypi-' + 'AgE' + fake(60, ALNUM + '_-')}\n",
         "a PyPI token"),
    ]


def negatives() -> list[tuple[str, str]]:
    """(file name, content) that must not be flagged."""
    local = LOCAL_CREDENTIALS
    lower = AWS_SECRET.lower()
    return [
        ("local.py", f"LOCAL = {local!r}\n"),
        ("local.json", json.dumps(local)),
        ("local.sh", "".join(f"export {k}={v}\n" for k, v in local.items())),
        ("local.yaml", "".join(f"{k.lower()}: {v}\n" for k, v in local.items())),
        ("client.py", f'boto3.client("s3", {lower}=LOCAL_CREDENTIALS["{AWS_SECRET}"])\n'),
        ("env.py", f'os.environ["{AWS_SECRET}"]\n'),
        ("ci.yaml", f"{AWS_SECRET}: ${{{{ secrets.{AWS_SECRET} }}}}\n"),
        ("run.sh", f"export {AWS_SECRET}=${AWS_SECRET}\n"),
        ("doc.md", f"Set `{AWS_SECRET}=<your secret key>` before publishing.\n"),
        ("short.env.txt", f"{AWS_SECRET}={fake(39)}\n"),
        ("long.py", f'{AWS_SECRET} = "{fake(41)}"\n'),
        ("commit.json", json.dumps({"git_commit": fake(40, "0123456789abcdef")})),
        ("md5s.py", f'MD5 = "{fake(32, "0123456789abcdef")}"\n'),
        ("hash.txt", f"sha256:{fake(64, '0123456789abcdef')}\n"),
        ("ids.py", f'short = "{"AK" + "IA" + upper(12)}"\nlowercase = "akia{upper(16).lower()}"\n'),
        ("gh.py", f'token = "{"gh" + "p_" + fake(20, ALNUM)}"\n'),
        ("slack.md", "xoxb tokens start with xoxb- and digits\n"),
        ("google.py", f'prefix = "{"AI" + "za" + fake(10, ALNUM)}"\n'),
        ("public.pem.txt", "-----BEGIN PUBLIC KEY-----\nMIIB\n"),
        ("prose.md", "Never publish a private key, an access key or a secret.\n"),
        ("tokens.py", "GITLAB_TOKEN = os.environ['GITLAB_TOKEN']\n"),
    ]


@pytest.mark.parametrize(("name", "content", "what"), positives(),
                         ids=[case[0] for case in positives()])
def test_each_credential_form_is_flagged(tmp_path, name, content, what):
    (tmp_path / name).write_text(content)
    assert [f"{name}: contains {what}"] == [line.split(" (line")[0]
                                             for line in find_secrets(tmp_path)]


@pytest.mark.parametrize(("name", "content"), negatives(), ids=[c[0] for c in negatives()])
def test_lookalikes_and_the_local_credentials_are_not_flagged(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    assert find_secrets(tmp_path) == []


def test_the_corpus_is_large_enough():
    assert len(positives()) >= 20 and len(negatives()) >= 20


@pytest.mark.parametrize("name", [".env", ".env.production", ".pypirc", ".netrc", "_netrc",
                                  ".git-credentials", "credentials", "deploy.pem", "tls.key",
                                  "id_rsa", "id_ed25519", "store.p12", ".PYPIRC"])
def test_credential_files_are_flagged_by_name(name):
    assert secret_name(name)


@pytest.mark.parametrize("name", [".env.example", "id_rsa.pub", "credentials.md", "netrc.py",
                                  "keys.py", "env.py"])
def test_ordinary_names_are_not(name):
    assert not secret_name(name)


def test_a_finding_names_the_line_and_never_the_secret(tmp_path):
    (tmp_path / "app.py").write_text(f'x = 1\n\n{AWS_SECRET} = "{SECRET}"\n')
    found = find_secrets(tmp_path)
    assert found == ["app.py: contains an AWS secret access key (line 3)"]
    assert SECRET not in found[0]
    assert scan_text(b"nothing here") == []


def test_the_project_scans_clean(tmp_path):
    export_source(tmp_path / "code", git_commit(), env=tmp_path / "env")
    started = time.process_time()
    assert find_secrets(tmp_path) == []
    print(f"scanned {sum(1 for p in tmp_path.rglob('*') if p.is_file())} files in "
          f"{time.process_time() - started:.3f} s of CPU")
    # The tests and benchmarks stay out of bundles, but this repository must not trip scanners.
    for folder in ("tests", "benchmarks", "data/sample"):
        assert find_secrets(PROJECT_ROOT / folder) == []
