/*
** file.c -- files written so that a reader never sees half of them: a file
** that holds secrets written whole (a new file, synced, renamed over the
** old one) and readable by its owner only (mode 0600, as botocore's
** JSONFileCache writes the AWS CLI's SSO token cache, which
** provider/aws_credentials.lua renews; a transcript whose torn tail is cut
** off), and a file cut back to the bytes that were whole (a transcript
** after a write that failed half way); what a path is before a user's
** file is opened (file_kind); and the directories of caches (make_dir).
*/
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tide.h"

/* nil and a FileError: "cannot <what> <path>: <why>". */
static int file_error(lua_State *L, const char *what, const char *path, int err) {
  lua_pushnil(L);
  tide__push_error(L, "FileError", "cannot %s %s: %s", what, path, strerror(err));
  return 2;
}

/// core.write_private(path, bytes [, sync]) -> true | nil, err (FileError):
/// writes bytes to a new file beside path, mode 0600, and renames it over
/// path; synced to disk first unless sync is false (a cache, whose reader
/// checks what it reads).
static int l_write_private(lua_State *L) {
  size_t n;
  const char *path = luaL_checkstring(L, 1);
  const char *data = luaL_checklstring(L, 2, &n);
  int sync = lua_isnoneornil(L, 3) || lua_toboolean(L, 3);
  char *tmp = strdup(lua_pushfstring(L, "%s.tideXXXXXX", path)); /* (mkstemp fills it in) */
  lua_pop(L, 1);
  if (tmp == NULL) return luaL_error(L, "not enough memory");
  int fd = mkstemp(tmp); /* (mkstemp's file is the owner's only: 0600) */
  int err = fd < 0 ? errno : 0;
  for (size_t off = 0; !err && off < n;) {
    ssize_t w = write(fd, data + off, n - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) err = errno;
    else off += (size_t)w;
  }
  if (fd >= 0 && !err && fchmod(fd, S_IRUSR | S_IWUSR) != 0) err = errno;
  if (fd >= 0 && !err && sync && fsync(fd) != 0) err = errno; /* (on disk before it replaces the old one) */
  if (fd >= 0 && close(fd) != 0 && !err) err = errno;
  if (!err && rename(tmp, path) != 0) err = errno;
  if (err && fd >= 0) unlink(tmp);
  free(tmp);
  if (err) return file_error(L, "write", path, err);
  lua_pushboolean(L, 1);
  return 1;
}

/// core.truncate(path, size) -> true | nil, err (FileError): cuts the file
/// at path to its first size bytes.
static int l_truncate(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer size = luaL_checkinteger(L, 2);
  luaL_argcheck(L, size >= 0, 2, "must be >= 0");
  if (truncate(path, (off_t)size) != 0) return file_error(L, "truncate", path, errno);
  lua_pushboolean(L, 1);
  return 1;
}

/// core.file_kind(path) -> "file" | "directory" | "other", size, mtime_ns |
/// nil: what path is (links followed), without opening it: a FIFO would
/// block the opener until a writer came, and a device could be read without
/// end. The modification time (nanoseconds) tells a changed file.
static int l_file_kind(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(path, &st) != 0) return 0;
  lua_pushstring(L, S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "directory" : "other");
  lua_pushinteger(L, (lua_Integer)st.st_size);
  lua_pushinteger(L, (lua_Integer)st.st_mtim.tv_sec * 1000000000 + (lua_Integer)st.st_mtim.tv_nsec);
  return 3;
}

/// core.make_dir(path) -> true | nil, err (FileError): a directory the
/// owner alone may use (0700); one that is there already is fine.
static int l_make_dir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (mkdir(path, S_IRWXU) != 0 && errno != EEXIST) return file_error(L, "create", path, errno);
  lua_pushboolean(L, 1);
  return 1;
}

void tide__open_file(lua_State *L) {
  lua_pushcfunction(L, l_file_kind);
  lua_setfield(L, -2, "file_kind");
  lua_pushcfunction(L, l_write_private);
  lua_setfield(L, -2, "write_private");
  lua_pushcfunction(L, l_truncate);
  lua_setfield(L, -2, "truncate");
  lua_pushcfunction(L, l_make_dir);
  lua_setfield(L, -2, "make_dir");
}
