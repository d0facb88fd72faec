#!/usr/bin/env python3
"""Python's smtplib as a real SMTP client of mailflow, driven by the end-to-end tests, and
imaplib and poplib as the mail clients that read what it delivered.

Each subcommand prints the facts the test checks, one `key: value` per line, and exits 0
when the scenario behaved as mailflow promises.
"""
import argparse
import imaplib
import poplib
import socket
import smtplib
import ssl
import sys
from email.message import EmailMessage


def context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = True
    return ctx


def message(sender, rcpt, subject):
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = subject
    msg.set_content("Sent by Python smtplib. Grüße, ünïcödé body.\n")
    return msg


def submit(args):
    """STARTTLS (or implicit TLS), AUTH LOGIN/PLAIN, send_message with SMTPUTF8."""
    host, port = args.server.rsplit(":", 1)
    if args.implicit:
        client = smtplib.SMTP_SSL(host, int(port), context=context(args.ca), timeout=30)
    else:
        client = smtplib.SMTP(host, int(port), timeout=30)
        client.starttls(context=context(args.ca))
    with client:
        client.ehlo("python.client.test")
        print(f"tls: {client.sock.version()}")
        client.login(args.user, args.password)
        if args.mail_from:
            try:
                client.send_message(message(args.mail_from, args.to, args.subject),
                                    from_addr=args.mail_from, to_addrs=[args.to])
                print("sender refused: no")
            except smtplib.SMTPSenderRefused as e:
                print(f"sender refused: {e.smtp_code}")
            client.rset()
        msg = message(args.user, args.to, args.subject)
        options = ["SMTPUTF8"] if args.smtputf8 else []
        if args.requiretls:
            options.append("REQUIRETLS")
        refused = client.send_message(msg, from_addr=args.user, to_addrs=[args.to], mail_options=options)
        print(f"refused: {len(refused)}")
        code, text = client.noop()
        print(f"noop: {code}")
    return 0


def bad_login(args):
    """Wrong passwords until the server cuts the client off; prints each reply code."""
    host, port = args.server.rsplit(":", 1)
    for attempt in range(args.attempts):
        client = smtplib.SMTP(host, int(port), timeout=30)
        client.starttls(context=context(args.ca))
        client.ehlo("python.client.test")
        try:
            # One mechanism per attempt (login() would also try LOGIN after PLAIN fails).
            client.user, client.password = args.user, "wrong-password"
            client.auth("PLAIN", client.auth_plain)
            print(f"attempt {attempt}: 235")
        except smtplib.SMTPAuthenticationError as e:
            print(f"attempt {attempt}: {e.smtp_code}")
        except smtplib.SMTPServerDisconnected:
            print(f"attempt {attempt}: disconnected")
            continue
        except smtplib.SMTPResponseException as e:
            print(f"attempt {attempt}: {e.smtp_code}")
            continue
        try:
            client.quit()
        except smtplib.SMTPServerDisconnected:
            pass
    return 0


def read_reply(f):
    """The lines of one (possibly multi-line) SMTP reply."""
    lines = []
    while True:
        line = f.readline().decode()
        lines.append(line.strip())
        if len(line) < 4 or line[3] != "-":
            return lines


def injection(args):
    """The STARTTLS command injection: a command pipelined behind STARTTLS in plaintext must
    not be executed inside the TLS session."""
    host, port = args.server.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    f = sock.makefile("rb")

    def reply():
        return read_reply(f)

    reply()  # greeting
    sock.sendall(b"EHLO attacker.test\r\n")
    reply()
    sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@attacker.test>\r\n")
    print(f"starttls: {reply()[-1][:3]}")
    tls = context(args.ca).wrap_socket(sock, server_hostname="localhost")
    tf = tls.makefile("rb")

    def tls_reply():
        return read_reply(tf)

    tls.sendall(b"NOOP\r\n")
    # If the injected MAIL had been run, its 250 2.1.0 would come first.
    print(f"first reply in tls: {tls_reply()[-1]}")
    tls.sendall(b"MAIL FROM:<after@client.test>\r\n")
    print(f"mail without ehlo: {tls_reply()[-1][:3]}")
    tls.close()
    return 0


def resume(args):
    """Starts TLS on the server with STARTTLS, then on --times new connections offering the
    first connection's session each time, as a sending MTA does with the one session it
    caches per destination (Postfix's smtp_tls_session_cache_database)."""
    host, port = args.server.rsplit(":", 1)
    ctx = context(args.ca)

    def starttls(session):
        sock = socket.create_connection((host, int(port)), timeout=30)
        f = sock.makefile("rb")
        read_reply(f)  # greeting
        sock.sendall(b"EHLO client.test\r\n")
        read_reply(f)
        sock.sendall(b"STARTTLS\r\n")
        read_reply(f)
        tls = ctx.wrap_socket(sock, server_hostname="localhost", session=session)
        tf = tls.makefile("rb")
        tls.sendall(b"EHLO client.test\r\n")
        # TLS 1.3 tickets follow the handshake: reading the reply takes them in.
        read_reply(tf)
        reused, session = tls.session_reused, tls.session
        tls.sendall(b"QUIT\r\n")
        read_reply(tf)
        tls.close()
        return reused, session

    reused, session = starttls(None)
    print(f"first: {'resumed' if reused else 'full'}")
    count = sum(starttls(session)[0] for _ in range(args.times))
    print(f"resumed: {count} of {args.times}")
    return 0


def peer_cert(args):
    """Writes the DER certificate the implicit-TLS listener presents."""
    host, port = args.server.rsplit(":", 1)
    ctx = ssl._create_unverified_context()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    with open(args.out, "wb") as f:
        f.write(der)
    print(f"bytes: {len(der)}")
    return 0


def imap_subjects(args):
    """Logs in over IMAP (imaplib) and prints the Subject of every message in INBOX."""
    host, port = args.server.rsplit(":", 1)
    with imaplib.IMAP4(host, int(port), timeout=30) as m:
        m.login(args.user, args.password)
        m.select("INBOX", readonly=True)
        _, data = m.search(None, "ALL")
        for num in data[0].split():
            _, fetched = m.fetch(num, "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            header = fetched[0][1].decode("utf-8", "replace").strip()
            print(f"subject: {header.split(':', 1)[1].strip()}")
    return 0


def pop3_subjects(args):
    """Logs in over POP3 (poplib) and prints the Subject of every message."""
    host, port = args.server.rsplit(":", 1)
    client = poplib.POP3(host, int(port), timeout=30)
    client.user(args.user)
    client.pass_(args.password)
    count, _ = client.stat()
    for i in range(1, count + 1):
        _, lines, _ = client.top(i, 0)
        for line in lines:
            if line.lower().startswith(b"subject:"):
                print(f"subject: {line.decode('utf-8', 'replace')[8:].strip()}")
    client.quit()
    return 0


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("submit")
    s.add_argument("--server", required=True)
    s.add_argument("--ca", required=True)
    s.add_argument("--user", required=True)
    s.add_argument("--password", required=True)
    s.add_argument("--to", required=True)
    s.add_argument("--subject", required=True)
    s.add_argument("--implicit", action="store_true")
    s.add_argument("--smtputf8", action="store_true")
    s.add_argument("--requiretls", action="store_true")
    s.add_argument("--mail-from", help="first try this sender; prints whether the server refused it")
    b = sub.add_parser("bad-login")
    b.add_argument("--server", required=True)
    b.add_argument("--ca", required=True)
    b.add_argument("--user", required=True)
    b.add_argument("--attempts", type=int, default=5)
    i = sub.add_parser("injection")
    i.add_argument("--server", required=True)
    i.add_argument("--ca", required=True)
    r = sub.add_parser("resume")
    r.add_argument("--server", required=True)
    r.add_argument("--ca", required=True)
    r.add_argument("--times", type=int, default=3)
    c = sub.add_parser("peer-cert")
    c.add_argument("--server", required=True)
    c.add_argument("--out", required=True)
    for name in ("imap-subjects", "pop3-subjects"):
        m = sub.add_parser(name)
        m.add_argument("--server", required=True)
        m.add_argument("--user", required=True)
        m.add_argument("--password", required=True)
    args = p.parse_args()
    commands = {"submit": submit, "bad-login": bad_login, "injection": injection, "resume": resume,
                "peer-cert": peer_cert,
                "imap-subjects": imap_subjects, "pop3-subjects": pop3_subjects}
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
