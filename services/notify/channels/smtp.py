"""Email through an SMTP server (aiosmtplib): one plain-text mail per notice, its
subject naming the incidents, its body the notice's text.

A connection is opened per mail: notices are rare, and a relay that dropped an idle
connection would otherwise fail the next one. What a failure means:

- no connection, a dropped one, a timeout, or a 4xx reply (the server's "try again
  later"): ``RetryLater``;
- a 5xx reply (login refused, sender or every recipient refused), a server without
  what the settings require (STARTTLS, AUTH), or a TLS certificate that does not
  verify: ``ChannelRefused``.

Replies are shown by their code only: their text may repeat an address.
"""

from __future__ import annotations

import logging
import ssl
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import aiosmtplib

from services.core.retry import RetryLater
from services.notify import messages
from services.notify.channels.base import ChannelRefused
from services.notify.incidents import Notice
from services.notify.settings import EmailChannel

log = logging.getLogger(__name__)


def mail(notice: Notice, *, sender: str, to: list[str]) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = messages.subject(notice)
    message["Date"] = format_datetime(datetime.now(UTC))
    # The sender's domain, not this host's name: looking that up can stall.
    message["Message-ID"] = make_msgid(idstring=notice.id, domain=sender.rsplit("@", 1)[1])
    message.set_content(messages.text(notice) + "\n")
    return message


def _judged(code: int, what: str) -> Exception:
    if 400 <= code < 500:
        return RetryLater(f"smtp {code} {what}")
    return ChannelRefused(f"smtp {code} {what}")


class Email:
    def __init__(self, name: str, settings: EmailChannel) -> None:
        self.name = name
        self._settings = settings
        self._password = settings.password.resolve() if settings.password else None

    async def send(self, notice: Notice) -> None:
        settings = self._settings
        message = mail(notice, sender=settings.sender, to=settings.to)
        try:
            refused, _ = await aiosmtplib.send(
                message,
                hostname=settings.host,
                port=settings.smtp_port,
                username=settings.username,
                password=self._password,
                use_tls=settings.security == "tls",
                start_tls=settings.security == "starttls",
                cert_bundle=str(settings.ca_file) if settings.ca_file else None,
                timeout=settings.timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [recipient.code for recipient in exc.recipients]
            if any(400 <= code < 500 for code in codes):
                raise RetryLater(f"smtp {min(codes)} recipients refused") from exc
            raise ChannelRefused(f"smtp {min(codes, default=550)} recipients refused") from exc
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise _judged(exc.code, "login refused") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _judged(exc.code, type(exc).__name__) from exc
        except ssl.SSLCertVerificationError as exc:
            raise ChannelRefused("smtp server certificate does not verify") from exc
        except OSError as exc:
            # No connection, a dropped one or a timeout (aiosmtplib's are OSErrors too).
            raise RetryLater(type(exc).__name__) from exc
        except aiosmtplib.SMTPException as exc:
            # SMTPNotSupported above all: no STARTTLS or AUTH where the settings need it.
            raise ChannelRefused(f"smtp {type(exc).__name__}") from exc
        if refused:
            log.warning(
                "notification mail refused by some recipients channel=%s refused=%s of=%s",
                self.name,
                len(refused),
                len(settings.to),
            )

    async def close(self) -> None:
        return None
