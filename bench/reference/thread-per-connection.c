// Reference server for bench/reference/side-by-side.sh: one blocking thread per connection,
// recvmsg -> SG_IO -> close -> write, with no checks at all (not a product: a measuring aid).
#include <pthread.h>
#include <scsi/sg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <arpa/inet.h>
static void *conn(void *arg) {
  int s = (int)(intptr_t)arg; uint32_t f = 0; write(s, &f, 4); if (read(s, &f, 4) != 4) goto out;
  for (;;) {
    unsigned char cdb[16], buf[8192 + 104] __attribute__((aligned(4096))), sense[96];
    char ctl[CMSG_SPACE(sizeof(int))]; struct iovec iov = {cdb, 16};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    if (recvmsg(s, &m, MSG_CMSG_CLOEXEC) != 16) break;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m); int fd = -1; if (c) memcpy(&fd, CMSG_DATA(c), sizeof fd);
    int out = cdb[0] == 0x5f; unsigned len = out ? (cdb[5] << 24 | cdb[6] << 16 | cdb[7] << 8 | cdb[8]) : (cdb[7] << 8 | cdb[8]);
    if (len > 8192) break;
    if (out && len && read(s, buf + 104, len) != (ssize_t)len) break;
    sg_io_hdr_t h = {.interface_id = 'S', .dxfer_direction = out ? SG_DXFER_TO_DEV : SG_DXFER_FROM_DEV,
      .cmd_len = 10, .mx_sb_len = 96, .dxfer_len = len, .dxferp = buf + 104, .cmdp = cdb, .sbp = sense, .timeout = 30000};
    memset(sense, 0, 96); int st = ioctl(fd, SG_IO, &h) < 0 ? 2 : h.status; close(fd);
    if (st == 2 && !h.sb_len_wr) { sense[0] = 0x70; sense[2] = 5; sense[7] = 10; sense[12] = 0x24; }
    unsigned n = out || st ? 0 : len - h.resid;
    uint32_t hd[2] = {htonl(st), htonl(n)}; memcpy(buf, hd, 8); memcpy(buf + 8, sense, 96);
    if (!out && n) memmove(buf + 104, buf + 104, n);
    if (write(s, buf, 104 + n) < 0) break;
  }
out: close(s); return 0;
}
int main(int argc, char **argv) {
  int l = socket(AF_UNIX, SOCK_STREAM, 0); struct sockaddr_un a = {.sun_family = AF_UNIX};
  strcpy(a.sun_path, argv[1]); unlink(argv[1]);
  if (bind(l, (void *)&a, sizeof a) || listen(l, 1024)) { perror("bind"); return 1; }
  pthread_attr_t at; pthread_attr_init(&at); pthread_attr_setstacksize(&at, 64 * 1024);
  for (;;) { int s = accept(l, 0, 0); if (s < 0) continue; pthread_t t; pthread_create(&t, &at, conn, (void *)(intptr_t)s); pthread_detach(t); }
}
