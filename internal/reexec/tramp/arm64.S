/*
 * herd's tiny exec trampoline for linux/arm64: the exec role of the Go
 * trampoline (trampoline_unix.go) without a runtime to bootstrap. The
 * contract is in tramp/README.md.
 */

#define SYS_fcntl       25
#define SYS_write       64
#define SYS_exit_group  94
#define SYS_getpid      172
#define SYS_execve      221
#define SYS_close_range 436

#define F_SETFD             2
#define FD_CLOEXEC          1
#define CLOSE_RANGE_CLOEXEC 4

	.text
	.globl _start
_start:
	ldr	x19, [sp]		/* argc */
	add	x20, sp, #8		/* argv */
	add	x21, x20, x19, lsl #3
	add	x21, x21, #8		/* envp: past argv's NULL */
	cmp	x19, #4
	b.lo	usage

	/* argv[1]: the status fd, in decimal */
	ldr	x1, [x20, #8]
	mov	x22, #0
	mov	x3, #10
1:	ldrb	w2, [x1], #1
	sub	w2, w2, #'0'
	cmp	w2, #9
	b.hi	2f
	madd	x22, x22, x3, x2
	b	1b
2:
	/* A successful execve closes the status pipe: the primary reads
	   end-of-file as "started". */
	mov	x0, x22
	mov	x1, #F_SETFD
	mov	x2, #FD_CLOEXEC
	mov	x8, #SYS_fcntl
	svc	#0

	/* Whatever the primary inherited without close-on-exec stops here. */
	add	x0, x22, #1
	mov	w1, #0xffffffff
	mov	x2, #CLOSE_RANGE_CLOEXEC
	mov	x8, #SYS_close_range
	svc	#0
	cbnz	x0, noclose

	/* LISTEN_PID=: the placeholder herd left, room for 10 digits */
	mov	x23, x21
3:	ldr	x24, [x23], #8
	cbz	x24, exec
	adr	x1, key
	mov	x2, #keylen
4:	ldrb	w3, [x24], #1
	ldrb	w4, [x1], #1
	cmp	w3, w4
	b.ne	3b
	subs	x2, x2, #1
	b.ne	4b
	mov	x8, #SYS_getpid
	svc	#0
	mov	x1, x24
	bl	utoa
	strb	wzr, [x1]

exec:
	ldr	x0, [x20, #16]		/* argv[2]: the path */
	add	x1, x20, #24		/* argv[3...]: the worker's argv */
	mov	x2, x21
	mov	x8, #SYS_execve
	svc	#0
	adr	x5, msg_exec
	mov	x6, #msg_exec_len
	b	fail

noclose:
	adr	x5, msg_close
	mov	x6, #msg_close_len

	/* Writes "<what>errno N" on the status pipe, exits 127. */
fail:
	neg	x0, x0
	sub	sp, sp, #64
	mov	x1, sp
6:	ldrb	w3, [x5], #1
	strb	w3, [x1], #1
	subs	x6, x6, #1
	b.ne	6b
	bl	utoa
	mov	x2, sp
	sub	x2, x1, x2
	mov	x1, sp
	mov	x0, x22
	mov	x8, #SYS_write
	svc	#0
	mov	x0, #127
	b	exit

usage:
	mov	x0, #2
	adr	x1, msg_usage
	mov	x2, #msg_usage_len
	mov	x8, #SYS_write
	svc	#0
	mov	x0, #2
exit:
	mov	x8, #SYS_exit_group
	svc	#0

	/* utoa writes w0 in decimal at x1 and returns x1 past it. */
utoa:
	mov	w9, w0
	mov	w10, #10
7:	udiv	w9, w9, w10
	add	x1, x1, #1
	cbnz	w9, 7b
	mov	x11, x1
8:	udiv	w9, w0, w10
	msub	w12, w9, w10, w0
	add	w12, w12, #'0'
	strb	w12, [x11, #-1]!
	mov	w0, w9
	cbnz	w0, 8b
	ret

key:	.ascii	"LISTEN_PID="
	.set	keylen, . - key
msg_exec:
	.ascii	"errno "
	.set	msg_exec_len, . - msg_exec
msg_close:
	.ascii	"close_range errno "
	.set	msg_close_len, . - msg_close
msg_usage:
	.ascii	"herd-exec: usage: herd-exec STATUSFD PATH ARGV0 [ARG...]\n"
	.set	msg_usage_len, . - msg_usage

	.section .note.GNU-stack,"",@progbits
