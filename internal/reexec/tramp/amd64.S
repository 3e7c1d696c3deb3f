/*
 * herd's tiny exec trampoline for linux/amd64: the exec role of the Go
 * trampoline (trampoline_unix.go) without a runtime to bootstrap. The
 * contract is in tramp/README.md.
 */

#define SYS_write       1
#define SYS_getpid      39
#define SYS_execve      59
#define SYS_fcntl       72
#define SYS_exit_group  231
#define SYS_close_range 436

#define F_SETFD             2
#define FD_CLOEXEC          1
#define CLOSE_RANGE_CLOEXEC 4

	.text
	.globl _start
_start:
	mov	(%rsp), %rbx		/* argc */
	lea	8(%rsp), %r12		/* argv */
	lea	16(%rsp,%rbx,8), %r13	/* envp: past argv's NULL */
	cmp	$4, %rbx
	jb	usage

	/* argv[1]: the status fd, in decimal */
	mov	8(%r12), %rsi
	xor	%r14d, %r14d
1:	movzbl	(%rsi), %eax
	sub	$'0', %eax
	cmp	$9, %eax
	ja	2f
	imul	$10, %r14, %r14
	add	%rax, %r14
	inc	%rsi
	jmp	1b
2:
	/* A successful execve closes the status pipe: the primary reads
	   end-of-file as "started". */
	mov	$SYS_fcntl, %eax
	mov	%r14, %rdi
	mov	$F_SETFD, %esi
	mov	$FD_CLOEXEC, %edx
	syscall

	/* Whatever the primary inherited without close-on-exec stops here. */
	mov	$SYS_close_range, %eax
	lea	1(%r14), %rdi
	mov	$0xffffffff, %esi
	mov	$CLOSE_RANGE_CLOEXEC, %edx
	syscall
	test	%rax, %rax
	jnz	noclose

	/* LISTEN_PID=: the placeholder herd left, room for 10 digits */
	mov	%r13, %r15
3:	mov	(%r15), %rdi
	test	%rdi, %rdi
	jz	exec
	add	$8, %r15
	lea	key(%rip), %rsi
	mov	$keylen, %ecx
	repe cmpsb
	jne	3b
	mov	$SYS_getpid, %eax
	syscall
	call	utoa
	movb	$0, (%rdi)

exec:
	mov	$SYS_execve, %eax
	mov	16(%r12), %rdi		/* argv[2]: the path */
	lea	24(%r12), %rsi		/* argv[3...]: the worker's argv */
	mov	%r13, %rdx
	syscall
	lea	msg_exec(%rip), %rsi
	mov	$msg_exec_len, %ecx
	jmp	fail

noclose:
	lea	msg_close(%rip), %rsi
	mov	$msg_close_len, %ecx

	/* Writes "<what>errno N" on the status pipe, exits 127. */
fail:
	neg	%rax
	mov	%rax, %rbx
	sub	$64, %rsp
	mov	%rsp, %rdi
	rep movsb
	mov	%rbx, %rax
	call	utoa
	mov	%rdi, %rdx
	sub	%rsp, %rdx
	mov	$SYS_write, %eax
	mov	%r14, %rdi
	mov	%rsp, %rsi
	syscall
	mov	$127, %edi
	jmp	exit

usage:
	mov	$SYS_write, %eax
	mov	$2, %edi
	lea	msg_usage(%rip), %rsi
	mov	$msg_usage_len, %edx
	syscall
	mov	$2, %edi
exit:
	mov	$SYS_exit_group, %eax
	syscall

	/* utoa writes %eax in decimal at %rdi and returns %rdi past it. */
utoa:
	mov	%eax, %eax
	mov	%eax, %r8d
	mov	$10, %ecx
4:	xor	%edx, %edx
	div	%ecx
	inc	%rdi
	test	%eax, %eax
	jnz	4b
	mov	%rdi, %rsi
	mov	%r8d, %eax
5:	xor	%edx, %edx
	div	%ecx
	add	$'0', %dl
	dec	%rsi
	mov	%dl, (%rsi)
	test	%eax, %eax
	jnz	5b
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
